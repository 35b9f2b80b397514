"""Truncation (head, tail, head+tail): the ids of a text longer than the sequence are exactly
the expected ones in training's token cache, in the exported model, and through the command
line, which records the strategy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bertclf.data.datasets import Split
from bertclf.data.packing import head_length
from bertclf.data.tokens import token_ids
from bertclf.encoders.map import get_encoder
from bertclf.encoders.tiny import TINY_VOCAB
from bertclf.run.export import export_model, load_model
from bertclf.run.model import build_classifier

VOCAB = TINY_VOCAB.read_text(encoding="utf-8").splitlines()
WORDS = [w for w in VOCAB[150:400] if w.isalpha()][:60]  # whole words of the tiny vocab
LONG = " ".join(WORDS)  # 60 tokens: longer than every sequence below
SHORT = " ".join(WORDS[:5])
CLS, SEP = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")


def expected_ids(words: list[str], seq_len: int, truncation: str,
                 head_tokens: int | None = None) -> list[int]:
    """[CLS] + the kept words' vocab indices + [SEP], straight from the vocab file."""
    budget = seq_len - 2
    ids = [VOCAB.index(w) for w in words]
    if len(ids) > budget:
        head = {"head": budget, "tail": 0,
                "head+tail": budget // 4 if head_tokens is None else head_tokens}[truncation]
        ids = ids[:head] + ids[len(ids) - (budget - head):]
    return [CLS, *ids, SEP]


@pytest.mark.parametrize("truncation, head_tokens", [
    ("head", None), ("tail", None), ("head+tail", None), ("head+tail", 5)])
def test_token_cache_keeps_the_expected_tokens(truncation, head_tokens):
    spec = get_encoder("tiny")
    split = Split([LONG, SHORT], np.array([0, 1], dtype=np.int32))
    ids = token_ids(spec, split, 24, truncation, head_tokens)
    first = ids.values[:ids.row_lengths[0]].tolist()
    second = ids.values[ids.row_lengths[0]:].tolist()
    assert first == expected_ids(WORDS, 24, truncation, head_tokens)
    assert second == expected_ids(WORDS[:5], 24, truncation, head_tokens), "short: untouched"


def test_head_tail_default_keeps_a_quarter_of_the_budget_from_the_start():
    assert head_length(512, "head+tail") == 127  # Sun et al.: 128 of 510 in their setup
    assert head_length(24, "head+tail") == 5
    ids = token_ids(get_encoder("tiny"), Split([LONG], np.array([0], dtype=np.int32)), 24,
                    "head+tail").values.tolist()
    assert ids == [CLS, *[VOCAB.index(w) for w in WORDS[:5] + WORDS[-17:]], SEP]


def test_the_cache_tells_strategies_apart():
    spec = get_encoder("tiny")
    split = Split([LONG], np.array([0], dtype=np.int32))
    kept = {t: token_ids(spec, split, 24, t).values.tolist()
            for t in ("head", "tail", "head+tail")}
    assert len({tuple(v) for v in kept.values()}) == 3


def test_export_applies_the_training_truncation(tmp_path):
    """The exported model packs a raw string into the same ids as training did, and its
    logits are the classifier's on exactly those ids."""
    spec = get_encoder("tiny")
    tf.keras.utils.set_random_seed(0)
    classifier = build_classifier(spec, 2)
    export_model(classifier, spec, ["neg", "pos"], 24, tmp_path / "model",
                 truncation="head+tail", head_tokens=None)
    model = load_model(tmp_path / "model")
    packed = model.preprocess(tf.constant([LONG, SHORT]))
    word_ids = packed["input_word_ids"].numpy()
    for row, words in zip(word_ids, (WORDS, WORDS[:5]), strict=True):
        want = expected_ids(words, 24, "head+tail")
        assert row.tolist() == want + [0] * (24 - len(want))
    np.testing.assert_array_equal(packed["input_mask"].numpy(), (word_ids != 0).astype(int))
    inputs = {k: tf.constant(v) for k, v in packed.items()}
    np.testing.assert_allclose(model(tf.constant([LONG, SHORT])).numpy(),
                               classifier(inputs, training=False).numpy(), atol=1e-5)
    card = json.loads((tmp_path / "model" / "assets.extra" / "bertclf.json").read_text())
    assert (card["truncation"], card["seq_len"]) == ("head+tail", 24)


def test_train_command_records_and_exports_the_strategy(tmp_path):
    data = tmp_path / "data.tsv"
    rows = [f"{LONG if i % 3 == 0 else SHORT} {'good' if i % 2 else 'bad'}\t{i % 2}"
            for i in range(60)]
    data.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bertclf", "train", "--data", str(data), "--encoder", "tiny",
         "--seq-len", "24", "--truncation", "head+tail", "--epochs", "1",
         "--precision", "float32", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["truncation"] == "head+tail"
    assert metrics["params"]["head_tokens"] is None
    model = load_model(out / "saved_model")
    row = model.preprocess(tf.constant([LONG]))["input_word_ids"].numpy()[0].tolist()
    assert row == expected_ids(WORDS, 24, "head+tail")
