"""ALBERT checkpoints with a SentencePiece spiece.model: token ids as SentencePiece gives them
after AlbertTokenizer's normalisation, and an imported ALBERT that trains and exports."""

import random
import unicodedata

import numpy as np
import sentencepiece as spm
from hf_checkpoints import TOLERANCE, encode, max_errors, reference_outputs

from bertclf.encoders.bert_encoder import INPUT_NAMES

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import tensorflow as tf
import tensorflow_hub as hub

pytest_plugins = ["hf_fixtures"]  # the `imported` fixture


def albert_preprocess(text: str) -> str:
    """Hugging Face AlbertTokenizer.preprocess_text with its defaults (remove_space=True,
    keep_accents=False, do_lower_case=True)."""
    text = " ".join(text.strip().split())
    text = text.replace("``", '"').replace("''", '"')
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.lower()


SPIECE_TEXTS = [
    "The Movie was GREAT, really great!",
    "He said ``wonderful'' and  left \t\n twice",  # TeX quotes, a whitespace run
    "Café naïve Über-cool, ½ résumé… ﬁne",  # accents, NFKD-only forms
    "\u00a0 a\u2003story\u3000 \u200b",  # Unicode spaces, at the ends too; a zero-width space
    " ".join(["a long review of the film"] * 12),  # over seq_len: the head is kept
    "",
]


def test_sentencepiece_token_ids_match_sentencepiece(imported):
    """The ALBERT preprocessor normalises as AlbertTokenizer does, encodes with the checkpoint's
    spiece.model, and packs [CLS] ... [SEP] <pad>... with the model's own special ids."""
    src, dest = imported("albert-spiece")
    model = spm.SentencePieceProcessor(model_file=str(src / "spiece.model"))
    pieces = [model.encode(albert_preprocess(t)) for t in SPIECE_TEXTS]
    # Normalisation matters: capitals, TeX quotes and accents change the ids.
    assert all(model.encode(t) != p for t, p in zip(SPIECE_TEXTS[:3], pieces[:3], strict=True))
    preprocess = hub.load(str(dest / "preprocess"))
    tokens = preprocess.tokenize(tf.constant(SPIECE_TEXTS))
    assert tokens.dtype == tf.int32 and tokens.ragged_rank == 1
    assert tokens.to_list() == pieces
    special = {k: int(v) for k, v in preprocess.tokenize.get_special_tokens_dict().items()}
    assert special == {"vocab_size": 256, "padding_id": 0, "start_of_sequence_id": 2,
                       "end_of_segment_id": 3, "mask_id": 4}
    cls, sep, pad = (model.piece_to_id(p) for p in ("[CLS]", "[SEP]", "<pad>"))
    seq_len = 48
    rows = [[cls, *p[:seq_len - 2], sep] for p in pieces]
    expected = np.array([row + [pad] * (seq_len - len(row)) for row in rows])
    out = preprocess(tf.constant(SPIECE_TEXTS))
    np.testing.assert_array_equal(out["input_word_ids"], expected)
    np.testing.assert_array_equal(out["input_mask"], expected != pad)
    assert max(map(len, pieces)) > seq_len  # truncation is exercised
    ids, mask, types = (out[k].numpy() for k in INPUT_NAMES)
    errors = max_errors(encode(dest, ids, mask, types), reference_outputs(src, ids, mask, types))
    assert max(errors.values()) < TOLERANCE, errors


def test_sentencepiece_albert_trains_and_exports(imported, tmp_path):
    """What `python -m bertclf train --encoder <import>` does: one epoch, then the exported
    SavedModel reloads and gives the trained model's logits for raw strings."""
    from bertclf.run.config import TrainConfig
    from bertclf.run.export import predict
    from bertclf.run.outputs import save_run
    from bertclf.run.train import train

    _, dest = imported("albert-spiece")
    rng = random.Random(1)
    for label, words in (("neg", ["bad", "cool"]), ("pos", ["great", "wonderful"])):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(24):
            review = " ".join(rng.choices(["the", "movie", "plot", "actor", *words], k=8))
            (tmp_path / "data" / label / f"{i}.txt").write_text(review, encoding="utf-8")
    config = TrainConfig(data=str(tmp_path / "data"), encoder=str(dest), seq_len=32,
                         batch_size=8, epochs=1, seed=0)
    result = train(config, verbose=0)
    assert len(result.history["loss"]) == 1 and np.isfinite(result.test_loss)
    paths = save_run(result, tmp_path / "run")

    texts = ["The movie was GREAT", "an actor, a plot: bad"]
    predictions = predict(paths["saved_model"], texts)
    preprocess = hub.load(str(dest / "preprocess"))
    inputs = preprocess.bert_pack_inputs([preprocess.tokenize(tf.constant(texts))],
                                         seq_length=32)
    logits = tf.saved_model.load(str(paths["saved_model"]))(tf.constant(texts)).numpy()
    np.testing.assert_allclose(logits, result.model(inputs, training=False), atol=1e-5)
    # predict: the class the one logit's sign picks (neg 0, pos 1), with its sigmoid probability.
    positive = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    assert [name for name, _ in predictions] == ["pos" if p > 0.5 else "neg" for p in positive]
    np.testing.assert_allclose([p for _, p in predictions], np.maximum(positive, 1 - positive),
                               rtol=1e-6)

