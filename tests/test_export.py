"""save_run writes metrics.json, curves.png and a raw-text SavedModel that reloads in a plain
TensorFlow process with the in-memory model's logits; predict scores texts with it."""

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from bertclf.data.datasets import Dataset, Split
from bertclf.data.tokens import tokenize
from bertclf.errors import UserError
from bertclf.run.config import TrainConfig
from bertclf.run.export import predict, probabilities
from bertclf.run.model import text_classifier
from bertclf.run.outputs import card_path, save_run
from bertclf.run.train import train

# isort: split
import tensorflow as tf

SEQ_LEN = 32
POSITIVE = "good great wonderful excellent superb brilliant lovely amazing".split()
NEGATIVE = "bad awful terrible horrible dreadful boring poor worst".split()
FILLER = "the a film movie story plot actor scene was it and this".split()
TEXTS = [
    "a wonderful film",
    "awful",
    "the plot was boring and the actor was poor",
    "great great great " * 30,  # longer than SEQ_LEN: cut by the exported preprocessor too
    "Ünïcödé — “quotes” and an emoji 🎬, superb",
    "",
]


def make_split(rng: random.Random, per_class: int) -> Split:
    pairs = []
    for label, words in enumerate((NEGATIVE, POSITIVE)):
        for _ in range(per_class):
            tokens = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
            tokens += [rng.choice(words) for _ in range(rng.randint(1, 3))]
            rng.shuffle(tokens)
            pairs.append((" ".join(tokens), label))
    rng.shuffle(pairs)
    return Split([t for t, _ in pairs], np.array([y for _, y in pairs], dtype=np.int32))


def separable_dataset() -> Dataset:
    rng = random.Random(0)
    return Dataset(make_split(rng, 60), make_split(rng, 15), make_split(rng, 15),
                   ["neg", "pos"], "in-memory")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    dataset = separable_dataset()
    config = TrainConfig(data="in-memory", encoder="tiny", seq_len=SEQ_LEN, batch_size=16,
                         epochs=4, patience=4, lr=3e-3, seed=3)
    result = train(config, dataset=dataset, verbose=0)
    out = tmp_path_factory.mktemp("export") / "run1"
    paths = save_run(result, out)
    return result, out, paths


def test_save_run_writes_the_three_outputs(run):
    result, out, paths = run
    assert paths == {"metrics": out / "metrics.json", "curves": out / "curves.png",
                     "saved_model": out / "saved_model"}
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.json",
                                                     "saved_model"]
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "saved_model" / "variables").is_dir()


def test_metrics_json(run):
    result, out, _ = run
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    history = metrics["history"]
    epochs_run = len(result.history["loss"])
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == epochs_run for values in history.values())
    assert history == result.history
    assert metrics["epochs_run"] == epochs_run
    assert metrics["best_epoch"] == result.best_epoch
    assert metrics["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert metrics["val_loss"] == history["val_loss"][result.best_epoch - 1]
    assert metrics["test_loss"] == pytest.approx(result.test_loss)
    assert metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert metrics["params"] == json.loads(json.dumps(asdict(result.config)))
    assert metrics["params"]["lr"] == 3e-3 and metrics["params"]["seed"] == 3
    assert metrics["params"]["seq_len"] == SEQ_LEN
    assert metrics["class_names"] == ["neg", "pos"]


def test_curves_png(run):
    import matplotlib.image

    _, out, _ = run
    data = (out / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, "two plotted panels, not an empty image"
    image = matplotlib.image.imread(out / "curves.png")  # decodes the whole file
    height, width = image.shape[:2]
    assert width > 400 and height > 300
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10, "has content"


def test_model_card(run):
    result, out, _ = run
    card = json.loads(card_path(out / "saved_model").read_text("utf-8"))
    assert card["class_names"] == ["neg", "pos"]
    assert card["seq_len"] == SEQ_LEN
    assert card["best_epoch"] == result.best_epoch


def in_memory_logits(result, texts: list[str]) -> dict[str, np.ndarray]:
    """The trained model's logits, two ways: the end-to-end Keras model, and the cached-token
    path (tokenize, pad to seq_len, classifier) that training uses."""
    end_to_end = text_classifier(result.encoder, result.model, SEQ_LEN)
    values, lengths = tokenize(result.encoder, texts, SEQ_LEN)
    ids = np.zeros((len(texts), SEQ_LEN), np.int32)
    for row, (start, n) in enumerate(zip(np.cumsum(lengths) - lengths, lengths, strict=True)):
        ids[row, :n] = values[start:start + n]
    inputs = {"input_word_ids": ids, "input_mask": (ids != 0).astype(np.int32),
              "input_type_ids": np.zeros_like(ids)}
    return {"text_classifier": end_to_end(tf.constant(texts), training=False).numpy(),
            "tokens": result.model(inputs, training=False).numpy()}


RELOAD = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
model = tf.saved_model.load(sys.argv[1])
texts = json.loads(sys.argv[2])
direct = model(tf.constant(texts)).numpy()
serving = model.signatures["serving_default"](text=tf.constant(texts))
print(json.dumps({
    "direct": direct.tolist(),
    "serving": serving["logits"].numpy().tolist(),
    "serving_keys": sorted(serving),
    "class_names": [n.decode() for n in model.class_names.numpy()],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                      ("bertclf", "tensorflow_hub", "tf_keras")),
}))
"""


@pytest.fixture(scope="module")
def reloaded(run):
    """The export reloaded by a fresh plain-TensorFlow process, as a user would."""
    _, out, _ = run
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BERTCLF_", "TF_USE_LEGACY_KERAS", "PYTHONPATH"))}
    done = subprocess.run([sys.executable, "-c", RELOAD, str(out / "saved_model"),
                           json.dumps(TEXTS)], capture_output=True, text=True, env=env,
                          cwd=out.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reloads_in_a_process_without_bertclf(reloaded):
    assert reloaded["modules"] == [], "the export must need neither bertclf nor tf-keras/hub"
    assert reloaded["serving_keys"] == ["logits"]
    assert reloaded["class_names"] == ["neg", "pos"]


def test_reloaded_logits_equal_the_in_memory_model(run, reloaded):
    result, _, _ = run
    direct = np.array(reloaded["direct"], dtype=np.float32)
    serving = np.array(reloaded["serving"], dtype=np.float32)
    assert direct.shape == serving.shape == (len(TEXTS), 1)
    np.testing.assert_allclose(serving, direct, rtol=0, atol=1e-5)
    for way, logits in in_memory_logits(result, TEXTS).items():
        assert logits.shape == direct.shape
        np.testing.assert_allclose(direct, logits, rtol=0, atol=1e-5,
                                   err_msg=f"reloaded export vs in-memory {way}")
    # The trained model tells the clear cases apart (so equality is not between constants).
    assert direct[0, 0] > 0 > direct[1, 0]


def test_predict_returns_class_names_and_probabilities(run, reloaded):
    _, out, _ = run
    predictions = predict(out / "saved_model", TEXTS)
    assert len(predictions) == len(TEXTS)
    logits = np.array(reloaded["direct"], dtype=np.float64)
    for (name, probability), logit in zip(predictions, logits[:, 0], strict=True):
        assert isinstance(name, str) and isinstance(probability, float)
        assert name in ("neg", "pos")
        assert name == ("pos" if logit > 0 else "neg")
        assert probability == pytest.approx(1 / (1 + np.exp(-abs(logit))), abs=1e-6)
    assert predictions[0][0] == "pos" and predictions[1][0] == "neg"


def test_predict_on_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(UserError, match="saved_model.pb"):
        predict(tmp_path, ["a wonderful film"])
    with pytest.raises(UserError):
        predict(tmp_path / "missing", ["a wonderful film"])


def test_probabilities():
    binary = probabilities(np.array([[0.0], [2.0], [-3.0]]))
    np.testing.assert_allclose(binary.sum(axis=1), 1.0)
    np.testing.assert_allclose(binary[:, 1], 1 / (1 + np.exp(-np.array([0.0, 2.0, -3.0]))))
    multi = probabilities(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(multi.sum(axis=1), 1.0)
    np.testing.assert_allclose(multi[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    assert np.isfinite(multi).all() and multi[1, 0] == pytest.approx(1.0)


def test_save_run_refuses_a_non_empty_folder(run, tmp_path):
    result, _, _ = run
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="not empty"):
        save_run(result, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_evaluate_scores_the_export_as_training_scored_the_model(run, capsys):
    """`bertclf evaluate`'s scoring of the exported model (its own preprocessing, bucketed
    batches) gives the test figures training reported for the in-memory model, and says how
    far it has got as it goes."""
    from bertclf.run.evaluate import evaluate_export

    result, out, _ = run
    test = separable_dataset().test
    scores = evaluate_export(out / "saved_model", test, ["neg", "pos"], batch_size=8,
                             progress_every=0)
    done = [int(line.split()[1].split("/")[0]) for line in capsys.readouterr().err.splitlines()
            if line.startswith("evaluate: ") and line.split()[1].endswith("/30")]
    assert len(done) >= 30 // 8 and done == sorted(set(done)) and done[-1] == 30
    assert scores["examples"] == len(test) == 30
    assert scores["accuracy"] == result.test_accuracy
    assert scores["loss"] == pytest.approx(result.test_loss, abs=2e-3)
    assert scores["precision"] == result.hardware["precision"]
    flipped = evaluate_export(out / "saved_model", test, ["pos", "neg"])  # names, not indices
    assert flipped["accuracy"] == pytest.approx(1 - result.test_accuracy)
