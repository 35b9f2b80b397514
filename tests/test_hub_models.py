"""Our TF Hub format BERT models load and behave like the real TF Hub ones."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertclf.encoders.bert_encoder import (
    INPUT_NAMES,
    BertConfig,
    build_bert_encoder,
    encoder_weights,
)
from bertclf.encoders.bert_preprocessor import save_preprocessor
from bertclf.encoders.tiny import TINY_VOCAB, build_tiny

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import tensorflow as tf
import tensorflow_hub as hub

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TEXTS = ["This movie was GREAT, really great!", "bad", "an utterly forgettable zzyzx film"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny")


def _encoder_inputs(word_ids, seq_length):
    """BERT inputs for one segment of word ids, padded to seq_length."""
    ids = [2, *word_ids, 3]
    pad = [0] * (seq_length - len(ids))
    return {
        "input_word_ids": tf.constant([ids + pad], tf.int32),
        "input_mask": tf.constant([[1] * len(ids) + pad], tf.int32),
        "input_type_ids": tf.zeros([1, seq_length], tf.int32),
    }


def load_tool(name: str):
    """A script of tools/ as a module."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vocab_layout():
    vocab = TINY_VOCAB.read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"a", "##a", "9", "##9", "!", "the", "movie"} <= set(vocab)
    assert len(vocab) == len(set(vocab)) == 4096
    small = load_tool("make_tiny_vocab").make_vocab(["The cat, the dog<br />the CAT's"], 111)
    assert small[:109] == vocab[:109] and small[109:] == ["the", "cat"]


def test_preprocessor_root_call(tiny):
    out = hub.KerasLayer(str(tiny[1]))(tf.constant(TEXTS))
    assert set(out) == {"input_word_ids", "input_mask", "input_type_ids"}
    ids, mask, types = (out[k].numpy() for k in INPUT_NAMES)
    for tensor in out.values():
        assert tensor.dtype == tf.int32 and tensor.shape == (3, 128)
    assert (ids[:, 0] == 2).all()
    lengths = mask.sum(axis=1)
    assert (ids[np.arange(3), lengths - 1] == 3).all()
    assert ((ids != 0) == (mask == 1)).all()
    assert (types == 0).all()
    assert lengths[1] == 3  # [CLS] bad [SEP]


def test_tokenize_and_pack(tiny):
    pre = hub.load(str(tiny[1]))
    special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
    assert special["start_of_sequence_id"] == 2 and special["end_of_segment_id"] == 3
    assert special["padding_id"] == 0 and special["vocab_size"] == 4096
    tokens = pre.tokenize(tf.constant(TEXTS))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.dtype == tf.int32
    assert tokens.shape.rank == 3
    long_text = tf.constant([" ".join(["great"] * 100), "bad"])
    pack = hub.KerasLayer(pre.bert_pack_inputs, arguments=dict(seq_length=32))
    out = pack([pre.tokenize(long_text)])
    assert out["input_word_ids"].shape == (2, 32)
    assert out["input_mask"].numpy()[0].sum() == 32 and out["input_word_ids"][0, -1] == 3
    pair = pack([pre.tokenize(long_text), pre.tokenize(tf.constant(["good", "fine"]))])
    types = pair["input_type_ids"].numpy()[0]
    assert types.sum() == 2 and pair["input_word_ids"][0, -1] == 3  # "good" [SEP] kept
    default = pre.bert_pack_inputs([pre.tokenize(long_text).merge_dims(1, 2)])
    assert default["input_word_ids"].shape == (2, 128)


def test_preprocessor_survives_vocab_deletion(tmp_path):
    vocab = tmp_path / "vocab.txt"
    shutil.copy(TINY_VOCAB, vocab)
    save_preprocessor(vocab, tmp_path / "pre", default_seq_length=16)
    vocab.unlink()
    assert any((tmp_path / "pre" / "assets").iterdir())
    out = hub.KerasLayer(str(tmp_path / "pre"))(tf.constant(["the movie"]))
    assert out["input_word_ids"].shape == (1, 16)
    assert (out["input_word_ids"].numpy()[0, :4] > 4).sum() == 2


def test_encoder_trains(tiny):
    encoder = hub.KerasLayer(str(tiny[0]), trainable=True)
    inputs = hub.KerasLayer(str(tiny[1]))(tf.constant(TEXTS))
    outputs = encoder(inputs)
    assert outputs["sequence_output"].shape == (3, 128, 128)
    assert outputs["pooled_output"].shape == (3, 128)
    assert len(outputs["encoder_outputs"]) == 2
    assert len(encoder.trainable_weights) > 0
    trained = encoder(inputs, training=True)["pooled_output"]
    assert not np.allclose(trained, outputs["pooled_output"])

    before = [w.numpy() for w in encoder.trainable_weights]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoder(inputs, training=True)["pooled_output"] ** 2)
    grads = tape.gradient(loss, encoder.trainable_weights)
    assert all(g is not None for g in grads)
    tf.keras.optimizers.Adam(1e-2).apply_gradients(
        zip(grads, encoder.trainable_weights, strict=True)
    )
    changed = [
        not np.allclose(b, w.numpy())
        for b, w in zip(before, encoder.trainable_weights, strict=True)
    ]
    assert sum(changed) > len(changed) // 2


def test_padding_does_not_change_outputs(tiny):
    encoder = hub.KerasLayer(str(tiny[0]))
    word_ids = [100, 200, 300, 400, 500, 600, 700]
    short = encoder(_encoder_inputs(word_ids, 16))
    long = encoder(_encoder_inputs(word_ids, 64))
    real = len(word_ids) + 2
    np.testing.assert_allclose(
        short["sequence_output"][:, :real], long["sequence_output"][:, :real], atol=1e-5
    )
    np.testing.assert_allclose(short["pooled_output"], long["pooled_output"], atol=1e-5)


def test_build_tiny_is_idempotent(tiny):
    dest = tiny[0].parent
    built = (tiny[0] / "saved_model.pb").stat()
    assert build_tiny(dest) == tiny
    again = (tiny[0] / "saved_model.pb").stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns), "rebuilt"
    assert [p.name for p in dest.parent.iterdir()] == ["tiny"]  # no temp folders left
    (dest.parent / "other").mkdir()
    (dest.parent / "other" / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="no complete tiny model"):
        build_tiny(dest.parent / "other")


@pytest.mark.parametrize(
    "config",
    [
        BertConfig(vocab_size=50, embedding_size=64),
        BertConfig(vocab_size=50, num_layers=3, share_layers=True),
    ],
    ids=["projection", "shared"],
)
def test_variant_configs(config):
    model = build_bert_encoder(config)
    out = model(_encoder_inputs([10, 11, 12], 8), training=False)
    assert out["sequence_output"].shape == (1, 8, 128)
    assert len(out["encoder_outputs"]) == config.num_layers
    names = {w.name for w in model.weights}
    if config.share_layers:
        assert len(model.weights) == 5 + 16 + 2
        assert "transformer_layer_shared/intermediate/kernel:0" in names
        assert not np.allclose(out["encoder_outputs"][0], out["encoder_outputs"][1])
    else:
        assert model.get_layer("word_embeddings").embeddings.shape == (50, 64)
        assert "embedding_projection/kernel:0" in names


def test_weights_are_seeded_and_distinct():
    """The same weights from the same seed whatever TensorFlow's global seed was (a built-in
    model is the same whoever builds it first), query and key apart."""
    config = BertConfig(vocab_size=50)
    tf.random.set_seed(7)
    a = build_bert_encoder(config, seed=1)
    tf.random.set_seed(8)
    b = build_bert_encoder(config, seed=1)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    weights = encoder_weights(a)
    query, key = (
        weights[f"transformer_layer_0/self_attention/{n}/kernel"] for n in ("query", "key")
    )
    assert not np.allclose(query, key)
