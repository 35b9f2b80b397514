"""Hugging Face checkpoints import into TF Hub-format models that match a NumPy reference,
and whose preprocessors give Hugging Face's WordPiece token ids."""

import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hf_checkpoints import (
    CHECKPOINTS,
    SMALL,
    TOLERANCE,
    encode,
    max_errors,
    minilm_installed,
    padded_batch,
    reference_outputs,
)

from bertclf.encoders.bert_encoder import INPUT_NAMES
from bertclf.encoders.hf import install
from bertclf.encoders.hf.install import import_checkpoint, import_record, minilm_checkpoint

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import tensorflow as tf
import tensorflow_hub as hub
from tokenizers import BertWordPieceTokenizer

pytest_plugins = ["hf_fixtures"]  # the `imported` fixture

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ARCHIVE = SHARED / "data" / "aclImdb_v1_labeled.tar.gz"
TEXTS = [
    "This movie was GREAT, really great!",
    "Café naïve Über-cool Straße, it´s ½ good… ﬁne",  # accents, NFKC-only forms
    "control\x96chars\u200band\u00a0nbsp\tand 漢字 mixed",  # C1/Cf controls, NBSP, CJK
    "a" * 120 + " short",  # over max_input_chars_per_word
    "",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    if not minilm_installed():
        pytest.skip(f"MiniLM checkpoint not installed ({install.MINILM_PIP})")
    src = minilm_checkpoint()
    dest = tmp_path_factory.mktemp("minilm") / "minilm"
    import_checkpoint(src, dest, seq_len=128)
    return src, dest


# ---------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_import_matches_numpy_reference(imported, kind):
    src, dest = imported(kind)
    ids, mask, types = padded_batch(CHECKPOINTS[kind].get("vocab_size", SMALL["vocab_size"]))
    layer = hub.KerasLayer(str(dest / "encoder"))
    outputs = encode(dest, ids, mask, types, layer)
    reference = reference_outputs(src, ids, mask, types)
    errors = max_errors(outputs, reference)
    print(kind, errors)
    assert max(errors.values()) < TOLERANCE, errors
    layers = CHECKPOINTS[kind].get("num_hidden_layers", SMALL["num_hidden_layers"])
    assert len(outputs["encoder_outputs"]) == layers
    record = import_record(dest)
    # import-hf's own check against the reference passed (or nothing would have been written).
    assert record["check"]["sequences"] == 3
    assert record["check"]["max_difference"] <= record["check"]["tolerance"]
    assert record["model_type"] == CHECKPOINTS[kind]["model_type"]
    assert record["tokenizer"] == ("sentencepiece" if kind == "albert-spiece" else "wordpiece")
    assert record["pooler"] == ("identity" if kind == "electra" else "checkpoint")
    assert record["lower_case"] is (kind != "electra")
    # The shared ALBERT layer is one set of variables; BERT/ELECTRA have one per layer.
    names = [v.name for v in layer.weights]
    assert sum("self_attention/query/kernel" in n for n in names) == (
        1 if kind.startswith("albert") else layers)


def test_minilm_matches_numpy_reference(minilm):
    src, dest = minilm
    preprocess = hub.load(str(dest / "preprocess"))
    inputs = preprocess(tf.constant([TEXTS[0], imdb_reviews(1)[0] if ARCHIVE.is_file() else
                                     TEXTS[1], "bad"]))
    ids, mask, types = (inputs[k].numpy() for k in INPUT_NAMES)
    assert mask[0].sum() < 128 and mask[-1].sum() == 3  # padding is exercised
    errors = max_errors(encode(dest, ids, mask, types), reference_outputs(src, ids, mask, types),
                        mask)
    print("minilm", errors)
    assert errors["sequence_output"] < TOLERANCE and errors["pooled_output"] < TOLERANCE, errors
    # Padding positions (a [PAD] query attending to the real tokens) are computed too, but in
    # MiniLM they amplify float32 rounding ~100x (float32 NumPy also drifts ~7e-5 there, while
    # real tokens stay ~3e-6); nothing reads them, so they get a looser bound.
    assert errors["padding_positions"] < 10 * TOLERANCE, errors
    assert import_record(dest)["lower_case"] is True


def test_minilm_matches_transformers(minilm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    src, dest = minilm
    ids, mask, types = padded_batch(30522, seed=3)
    model = transformers.BertModel.from_pretrained(str(src)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    token_type_ids=torch.tensor(types, dtype=torch.long))
    reference = {"sequence_output": out.last_hidden_state.numpy(),
                 "pooled_output": out.pooler_output.numpy()}
    errors = max_errors(encode(dest, ids, mask, types), reference, mask)
    assert errors["sequence_output"] < TOLERANCE and errors["pooled_output"] < TOLERANCE, errors
    assert errors["padding_positions"] < 10 * TOLERANCE, errors


def test_imported_encoder_is_trainable(imported):
    _, dest = imported("bert")
    layer = hub.KerasLayer(str(dest / "encoder"), trainable=True)
    ids, mask, types = padded_batch(SMALL["vocab_size"])
    inputs = {"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
              "input_type_ids": tf.constant(types)}
    weights = tf.constant(np.random.default_rng(0).normal(size=(1, 1, 32)), tf.float32)
    with tf.GradientTape() as tape:
        out = layer(inputs, training=True)
        loss = tf.reduce_sum(out["sequence_output"] * weights) + tf.reduce_sum(
            out["pooled_output"])
    grads = tape.gradient(loss, layer.trainable_variables)
    assert len(layer.trainable_variables) == len(layer.weights) == 5 + 2 * 16 + 2
    assert all(g is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0
               for g in grads)


# ---------------------------------------------------------------------------- tokenizer


def imdb_reviews(n: int, non_ascii: int = 0) -> list[str]:
    """The archive's first n reviews, then its first ``non_ascii`` reviews with non-ASCII text."""
    if not ARCHIVE.is_file():
        pytest.skip(f"IMDB archive {ARCHIVE} is absent")
    first, special = [], []
    pattern = re.compile(r"(^|/)(train|test)/(pos|neg)/[^/]+\.txt$")
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and pattern.search(member.name)):
                continue
            review = tar.extractfile(member).read().decode("utf-8")
            if len(first) < n:
                first.append(review)
            elif not review.isascii() and len(special) < non_ascii:
                special.append(review)
            if len(first) == n and len(special) == non_ascii:
                break
    return first + special


def hf_ids(vocab: Path, texts, lower_case: bool, seq_len: int | None):
    tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=lower_case)
    if seq_len:
        tokenizer.enable_truncation(max_length=seq_len)
        tokenizer.enable_padding(length=seq_len, pad_id=0)
    return [e.ids for e in tokenizer.encode_batch(list(texts))]


def preprocessor_ids(dest: Path, texts):
    """Padded root-call ids, and the untruncated wordpieces of .tokenize with [CLS]/[SEP]."""
    preprocess = hub.load(str(dest / "preprocess"))
    out = preprocess(tf.constant(texts))
    tokens = preprocess.tokenize(tf.constant(texts)).merge_dims(1, -1).to_list()
    special = {k: int(v) for k, v in preprocess.tokenize.get_special_tokens_dict().items()}
    full = [[special["start_of_sequence_id"], *t, special["end_of_segment_id"]] for t in tokens]
    return out, full


def test_imdb_token_ids_match_hf_tokenizer(imported, request):
    """The preprocessor tokenizes real reviews exactly as Hugging Face's BertWordPieceTokenizer.

    Its lower-casing is BERT's (NFD accent stripping, control characters deleted), not TF
    Text's NFKC case folding: with that, "it´s", "½", "…", "ß" and C1 control characters
    gave different ids in about 1% of IMDB reviews.
    """
    texts = imdb_reviews(250, non_ascii=50)
    if minilm_installed():
        src, dest = request.getfixturevalue("minilm")
    else:
        src, dest = imported("bert")
    seq_len = import_record(dest)["key"]["seq_len"]
    out, full = preprocessor_ids(dest, texts)
    expected = hf_ids(src / "vocab.txt", texts, True, seq_len)
    ids = out["input_word_ids"].numpy()
    agree = sum(list(row) == exp for row, exp in zip(ids, expected, strict=True))
    untruncated = hf_ids(src / "vocab.txt", texts, True, None)
    agree_full = sum(a == b for a, b in zip(full, untruncated, strict=True))
    print(f"{src.name}: {agree}/{len(texts)} padded, {agree_full}/{len(texts)} untruncated agree")
    assert agree_full == len(texts)
    assert agree == len(texts)
    assert (out["input_mask"].numpy() == (np.array(expected) != 0)).all()
    assert (out["input_type_ids"].numpy() == 0).all()
    assert max(len(t) for t in full) > seq_len  # truncation is exercised


@pytest.mark.parametrize("kind", ["bert", "electra"])
def test_small_vocab_token_ids_match_hf_tokenizer(imported, kind):
    src, dest = imported(kind)
    lower_case = kind == "bert"  # the electra checkpoint is cased
    out, full = preprocessor_ids(dest, TEXTS)
    assert full == hf_ids(src / "vocab.txt", TEXTS, lower_case, None)
    assert out["input_word_ids"].numpy().tolist() == hf_ids(src / "vocab.txt", TEXTS,
                                                            lower_case, 48)

