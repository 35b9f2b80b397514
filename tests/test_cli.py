"""`python -m bertclf` as users and checks run it: train, predict, encoders, and one-line
errors with exit status 2 for every user mistake."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
POSITIVE = "good great wonderful excellent superb brilliant lovely amazing".split()
NEGATIVE = "bad awful terrible horrible dreadful boring poor worst".split()


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m bertclf ARGS` in cwd with this session's cache and this checkout, and
    the command's own log settings (not the ones conftest set for this process)."""
    env = dict(os.environ)  # BERTCLF_CACHE_DIR: the session's throwaway cache (conftest)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "BERTCLF_VERBOSE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bertclf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def show(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"


def write_tsv(path: Path, per_class: int = 60, header: str = "text\tlabel") -> Path:
    """Sentences the tiny vocabulary knows, labelled pos/neg by their sentiment words."""
    lines = [header]
    for i in range(per_class):
        lines.append(f"the film was {POSITIVE[i % 8]} and {POSITIVE[(i * 3) % 8]} {i}\tpos")
        lines.append(f"the film was {NEGATIVE[i % 8]} and {NEGATIVE[(i * 5) % 8]} {i}\tneg")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def exported_predictions(saved_model: Path, texts: list[str]) -> list[tuple[str, float]]:
    """For each text, the class (neg, pos) that the exported model's one logit picks, and that
    class's sigmoid probability."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the preprocessor's ops)

    logits = tf.saved_model.load(str(saved_model))(tf.constant(texts)).numpy()
    positive = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    return [("pos", p) if p > 0.5 else ("neg", 1 - p) for p in positive]


def as_printed(predictions: list[tuple[str, float]]) -> list[str]:
    """The lines `python -m bertclf predict` prints for these predictions."""
    return [f"{name}\t{probability:.4f}" for name, probability in predictions]


def write_classes(folder: Path, texts: dict[str, list[bytes]]) -> Path:
    for name, contents in texts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, content in enumerate(contents):
            (folder / name / f"{i}.txt").write_bytes(content)
    return folder


# --- a successful run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli-train")
    write_tsv(cwd / "sentences.tsv")
    done = cli("train", "--data", "sentences.tsv", "--encoder", "tiny", "--max-examples", "60",
               "--epochs", "1", "--seq-len", "32", "--out", "run1", cwd=cwd)
    return cwd, done


def test_train_writes_metrics_curves_and_model(trained):
    cwd, done = trained
    assert done.returncode == 0, show(done)
    assert "Traceback" not in done.stderr
    run = cwd / "run1"
    assert (run / "metrics.json").is_file()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "saved_model" / "saved_model.pb").is_file()
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    params = metrics["params"]
    assert (params["encoder"], params["max_examples"], params["epochs"], params["seq_len"]) == \
        ("tiny", 60, 1, 32)
    assert len(metrics["history"]["val_loss"]) == 1 and metrics["best_epoch"] == 1
    assert metrics["test_loss"] > 0
    assert metrics["class_names"] == ["neg", "pos"]
    # 120 sentences: 24 carved out for test, 19 of the other 96 for validation, and the
    # remaining 77 sampled down to 60.
    sizes = [metrics["data"][f"{s}_examples"] for s in ("train", "validation", "test")]
    assert sizes == [60, 19, 24]
    # The test accuracy is the exported model's on the same 24 test sentences.
    from bertclf.data.datasets import load_dataset

    test = load_dataset(cwd / "sentences.tsv", max_examples=60).test
    predictions = exported_predictions(run / "saved_model", test.texts)
    correct = sum(name == ["neg", "pos"][label]
                  for (name, _), label in zip(predictions, test.labels, strict=True))
    assert metrics["test_accuracy"] == pytest.approx(correct / 24)
    assert "test_accuracy" in done.stdout


def test_predict_prints_a_class_and_probability_per_text(trained):
    cwd, done = trained
    assert done.returncode == 0, "training failed; see the test above"
    texts = ["a wonderful film", "awful"]
    done = cli("predict", "run1/saved_model", *texts, cwd=cwd)
    assert done.returncode == 0, show(done)
    expected = as_printed(exported_predictions(cwd / "run1" / "saved_model", texts))
    assert done.stdout.splitlines() == expected, show(done)


# What TensorFlow itself writes as it starts: absl's notice, then native log records (on this
# machine, the missing CUDA driver's INFO line and the cuInit ERROR), and tf-keras' warning.
TF_START_UP = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:"
                         r"|\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: [IWEF] |WARNING:tensorflow:)",
                         re.MULTILINE)


def test_train_prints_only_its_own_lines(trained):
    cwd, done = trained
    assert done.returncode == 0, "training failed; see the test above"
    assert not TF_START_UP.search(done.stderr), show(done)
    assert done.stdout.startswith("data: "), show(done)


def test_verbose_shows_tensorflows_start_up_lines(trained):
    cwd, done = trained
    assert done.returncode == 0, "training failed; see the test above"
    quiet = cli("predict", "run1/saved_model", "a wonderful film", cwd=cwd)
    verbose = cli("predict", "run1/saved_model", "a wonderful film", "--verbose", cwd=cwd)
    assert quiet.returncode == verbose.returncode == 0, show(quiet) + show(verbose)
    assert not TF_START_UP.search(quiet.stderr), show(quiet)
    assert TF_START_UP.search(verbose.stderr), show(verbose)
    assert verbose.stdout == quiet.stdout


def test_encoders_lists_the_map():
    done = cli("encoders", cwd=REPO)
    assert done.returncode == 0, show(done)
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert rows and all(len(row) == 3 and all(row) for row in rows), done.stdout
    names = [row[0] for row in rows]
    assert len(names) == len(set(names))
    by_name = {row[0]: row[1:] for row in rows}
    assert by_name["tiny"] == ["builtin:tiny/encoder", "builtin:tiny/preprocess"]
    small = {name: handles for name, handles in by_name.items() if name.startswith("small_bert/")}
    assert len(small) >= 2, names
    assert "small_bert/bert_en_uncased_L-2_H-128_A-2" in small
    for encoder, preprocess in small.values():
        assert encoder.startswith("https://tfhub.dev/tensorflow/small_bert/")
        assert preprocess == "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"


def test_readme_and_help_name_every_train_flag():
    """README's list of `train` flags names each TrainConfig field's flag and no other, with
    the choices the config accepts; `train --help` gives each the help of its field."""
    import argparse
    from dataclasses import fields

    from bertclf.__main__ import add_train_options
    from bertclf.run.config import (
        LR_SCHEDULES,
        PRECISIONS,
        TRUNCATIONS,
        WD_SCHEDULES,
        TrainConfig,
        help_text,
    )

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("Every `TrainConfig` field is a flag:"):]
    listed = listed[:listed.index("`.\n")]
    flags = {f.name: "--" + f.name.replace("_", "-") for f in fields(TrainConfig)}
    assert set(re.findall(r"--[a-z][a-z0-9-]*", listed)) == set(flags.values())
    assert dict(re.findall(r"(--[a-z-]+) \{([^}]*)\}", listed)) == {
        "--truncation": ",".join(TRUNCATIONS), "--lr-schedule": ",".join(LR_SCHEDULES),
        "--wd-schedule": ",".join(WD_SCHEDULES), "--precision": ",".join(PRECISIONS)}
    parser = argparse.ArgumentParser(  # one line per flag: no words broken at hyphens
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=10_000))
    add_train_options(parser)
    shown = " ".join(parser.format_help().split())
    for name, flag in flags.items():
        assert f"{flag} {name.upper()} {' '.join(help_text(name).split())}" in shown, name


def test_config_file_gives_the_options_and_flags_override_it(tmp_path):
    """`train --config FILE.toml`: the file's options (its data path relative to the file),
    the flags given over them, as the run's metrics.json records."""
    (tmp_path / "data").mkdir()
    write_tsv(tmp_path / "data" / "sentences.tsv")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "small.toml").write_text(
        'data = "../data/sentences.tsv"\nencoder = "tiny"\nmax_examples = 40\n'
        'seq_len = 24\nepochs = 3\nlr = 2e-3\n', encoding="utf-8")
    done = cli("train", "--config", "runs/small.toml", "--epochs", "1", "--out", "run",
               cwd=tmp_path)
    assert done.returncode == 0, show(done)
    params = json.loads((tmp_path / "run" / "metrics.json").read_text())["params"]
    assert params["data"] == str((tmp_path / "data" / "sentences.tsv").resolve())
    assert (params["seq_len"], params["lr"], params["max_examples"]) == (24, 2e-3, 40)
    assert params["epochs"] == 1, "the flag overrides the file"
    assert params["batch_size"] == 32, "what neither gives keeps its default"


@pytest.mark.parametrize("name", ["hand_minilm_128.toml", "hand_minilm_256.toml"])
def test_the_imdb_scripts_config_files_are_valid_runs(name):
    """The hand-configured IMDB runs' files (experiments/imdb_minilm*.sh) hold valid options
    whose data path, relative to the file, is the shared archive."""
    from bertclf.__main__ import read_config_file
    from bertclf.run.config import TrainConfig

    options = read_config_file(REPO / "experiments" / name)
    TrainConfig.from_dict(options).validate()
    assert Path(options["data"]).resolve() == (
        REPO.parent / "shared" / "data" / "aclImdb_v1_labeled.tar.gz").resolve()


# --- user errors ---------------------------------------------------------------------------


def _truncated_archive(cwd: Path) -> str:
    folder = write_classes(cwd / "reviews", {"neg": [b"bad film"] * 30, "pos": [b"good"] * 30})
    with tarfile.open(cwd / "whole.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="reviews")
    data = (cwd / "whole.tar.gz").read_bytes()
    (cwd / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    return "cut.tar.gz"


BAD_FLAGS = {
    "unknown encoder": ["--encoder", "no-such-encoder"],
    "--epochs zero": ["--epochs", "zero"],
    "--epochs 0": ["--epochs", "0"],
    "--epochs abc": ["--epochs", "abc"],
    "--lr -1": ["--lr", "-1"],
    "--precision fp8": ["--precision", "fp8"],
    "--batch-size 0": ["--batch-size", "0"],
    "unknown flag": ["--learning-rate", "1e-3"],
    "--truncation middle": ["--truncation", "middle"],
    "--eval-every 1.5": ["--eval-every", "1.5"],
}


def _setup(case: str, cwd: Path) -> list[str]:
    """Prepare cwd for one bad invocation; return its arguments."""
    write_tsv(cwd / "ok.tsv", per_class=10)
    train = ["train", "--encoder", "tiny", "--epochs", "1", "--out", "out"]
    if case == "missing data path":
        return [*train, "--data", "no-such-data.tsv"]
    if case == "empty folder":
        (cwd / "empty").mkdir()
        return [*train, "--data", "empty"]
    if case == "single class":
        write_classes(cwd / "one", {"pos": [b"good film", b"great film", b"superb"]})
        return [*train, "--data", "one"]
    if case == "non-UTF-8 file":
        latin1 = "caf\u00e9 tr\u00e8s bon".encode("latin-1")
        write_classes(cwd / "latin", {"neg": [b"bad film"] * 3, "pos": [b"good", latin1]})
        return [*train, "--data", "latin"]
    if case == "truncated archive":
        return [*train, "--data", _truncated_archive(cwd)]
    if case == "TSV missing columns":
        write_tsv(cwd / "columns.tsv", per_class=10, header="sentence\tsentiment")
        return [*train, "--data", "columns.tsv"]
    if case in BAD_FLAGS:  # a good data file with one bad flag
        return ["train", "--data", "ok.tsv", *BAD_FLAGS[case], "--out", "out"]
    if case == "missing --data":
        return ["train", "--out", "out"]
    if case == "missing --config file":
        return ["train", "--config", "no-such-run.toml", "--out", "out"]
    if case == "--config not TOML":
        (cwd / "run.toml").write_text("seq_len = = 3\n", encoding="utf-8")
        return ["train", "--config", "run.toml", "--out", "out"]
    if case == "--config unknown key":
        (cwd / "run.toml").write_text('data = "ok.tsv"\nlearning_rate = 1e-3\n',
                                      encoding="utf-8")
        return ["train", "--config", "run.toml", "--out", "out"]
    if case == "--config without data":
        (cwd / "run.toml").write_text('encoder = "tiny"\n', encoding="utf-8")
        return ["train", "--config", "run.toml", "--out", "out"]
    if case == "out folder not empty":
        (cwd / "out").mkdir()
        (cwd / "out" / "keep.txt").write_text("mine", encoding="utf-8")
        return ["train", "--data", "ok.tsv", "--encoder", "tiny", "--out", "out"]
    if case == "predict on a folder that is not a model":
        (cwd / "out").mkdir()
        (cwd / "out" / "keep.txt").write_text("mine", encoding="utf-8")
        return ["predict", "out", "a wonderful film"]
    if case == "predict on a missing folder":
        return ["predict", "no-such-model", "a wonderful film"]
    if case == "archive escaping its folder":
        with tarfile.open(cwd / "evil.tar.gz", "w:gz") as tar:
            member = tarfile.TarInfo("../evil.txt")
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        return [*train, "--data", "evil.tar.gz"]
    if case == "archive with a link":
        with tarfile.open(cwd / "link.tar.gz", "w:gz") as tar:
            member = tarfile.TarInfo("reviews/pos/1.txt")
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        return [*train, "--data", "link.tar.gz"]
    if case == "unwritable output folder":
        (cwd / "a-file").write_text("not a folder", encoding="utf-8")
        return ["train", "--data", "ok.tsv", "--encoder", "tiny", "--out", "a-file/run"]
    raise AssertionError(case)


# case -> a fragment the one error line must hold
ERRORS = {
    "missing data path": "no-such-data.tsv",
    "empty folder": "empty",
    "single class": "one class",
    "non-UTF-8 file": "UTF-8",
    "truncated archive": "truncated",
    "TSV missing columns": "column",
    "unknown encoder": "no-such-encoder",
    "--epochs zero": "epochs",
    "--epochs 0": "epochs",
    "--epochs abc": "epochs",
    "--lr -1": "lr",
    "--batch-size 0": "batch",
    "--precision fp8": "precision",
    "--truncation middle": "truncation",
    "--eval-every 1.5": "eval_every",
    "unknown flag": "--learning-rate",
    "missing --data": "--data",
    "missing --config file": "no-such-run.toml",
    "--config not TOML": "not valid TOML",
    "--config unknown key": "learning_rate",
    "--config without data": "--data",
    "out folder not empty": "not empty",
    "predict on a folder that is not a model": "saved_model.pb",
    "predict on a missing folder": "no-such-model",
    "archive escaping its folder": "evil",
    "archive with a link": "link",
    "unwritable output folder": "a-file",
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """Every bad invocation, each in its own folder, a few at a time."""
    root = tmp_path_factory.mktemp("cli-errors")

    def run(case: str):
        cwd = root / re.sub(r"\W+", "-", case).strip("-")
        cwd.mkdir()
        args = _setup(case, cwd)
        before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
        return case, (cwd, before, cli(*args, cwd=cwd, timeout=300))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, ERRORS))


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_error_is_one_line_and_exit_status_2(error_runs, case):
    cwd, before, done = error_runs[case]
    assert done.returncode == 2, show(done)
    assert "Traceback" not in done.stderr + done.stdout, show(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr:\n{show(done)}"
    assert ERRORS[case] in lines[0], show(done)
    assert "error" in lines[0]
    after = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    assert after == before, "a failed command leaves the folder as it was"


def test_non_utf8_error_names_the_file(error_runs):
    _, _, done = error_runs["non-UTF-8 file"]
    assert "1.txt" in done.stderr and "pos" in done.stderr


# --- the check from the issue, on the real IMDB archive ------------------------------------


def test_train_on_the_imdb_archive(tmp_path, imdb_archive):
    done = cli("train", "--data", str(imdb_archive), "--encoder", "tiny", "--max-examples",
               "400", "--epochs", "2", "--out", "run1", cwd=tmp_path)
    assert done.returncode == 0, show(done)
    run = tmp_path / "run1"
    assert (run / "curves.png").is_file() and (run / "saved_model" / "saved_model.pb").is_file()
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["class_names"] == ["neg", "pos"]
    # Patience 1 cannot stop before the second epoch, the last; the better one is kept.
    val_loss = metrics["history"]["val_loss"]
    assert len(metrics["history"]["loss"]) == len(val_loss) == 2
    assert metrics["best_epoch"] == 1 + int(np.argmin(val_loss))
    assert {metrics["data"][f"{s}_examples"] for s in ("train", "validation", "test")} == {400}
    correct = metrics["test_accuracy"] * 400  # a whole number of the 400 test reviews
    assert correct == pytest.approx(round(correct), abs=1e-3)
    done = cli("predict", "run1/saved_model", "a wonderful film", cwd=tmp_path)
    assert done.returncode == 0, show(done)
    expected = as_printed(exported_predictions(run / "saved_model", ["a wonderful film"]))
    assert done.stdout.splitlines() == expected, show(done)


def test_float16_without_a_gpu_is_a_user_error(tmp_path):
    """Found once TensorFlow has looked for a GPU (so after its start-up lines on stderr),
    before anything is trained or written."""
    from bertclf.run import accel

    write_tsv(tmp_path / "ok.tsv", per_class=10)
    done = cli("train", "--data", "ok.tsv", "--encoder", "tiny", "--epochs", "1",
               "--precision", "mixed_float16", "--out", "out", cwd=tmp_path)
    if accel.has_gpu():
        assert done.returncode == 0, show(done)
        return
    assert done.returncode == 2, show(done)
    assert "Traceback" not in done.stderr + done.stdout, show(done)
    assert "mixed_float16 needs a GPU" in done.stderr.strip().splitlines()[-1], show(done)
    assert not (tmp_path / "out").exists()
