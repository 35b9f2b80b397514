"""The promoted winner's seed ensemble against its single model: test accuracy and latency.

    python -m bench.ensemble [--train 2000] [--test 5000] [--seeds 3] [--folder DIR]
    python -m bench.ensemble --study NAME [--storage URL] [--tracking-uri URI]

Without --study it builds a small promoted study first (the tiny encoder on the IMDB
archive: a 2-trial search, then the best configuration re-trained over --seeds seeds),
then exports the single model (`best --export`) and the ensemble (`best --export
--ensemble`), scores both on the promotion's test split and times them warm, through
`serving_default`: per batch of 32 reviews and per single review (medians).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.faults import DATA, this_checkout

EXPERIMENT = """\
[data]
path = "{data}"
max_train_examples = {train}
max_val_examples = {val}
max_test_examples = {test}

[search]
encoder = "tiny"
seq_len = 128
epochs = 4
patience = 2  # patience 1 let a seed stop at its first epoch, unlearned
lr = {{ low = 1e-3, high = 5e-3, log = true }}
batch_size = 32
precision = "float32"

[study]
pruner = "none"
"""
STUDY = "ensemble-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", help="an existing promoted study (default: build one)")
    parser.add_argument("--storage", help="its Optuna storage (default sqlite:///optuna.db)")
    parser.add_argument("--tracking-uri", help="its MLflow tracking URI (default "
                        "sqlite:///mlflow.db)")
    parser.add_argument("--data", default=str(DATA), help="the IMDB archive (default: "
                        "%(default)s)")
    parser.add_argument("--train", type=int, default=2000, help="training reviews")
    parser.add_argument("--val", type=int, default=1000, help="validation reviews")
    parser.add_argument("--test", type=int, default=5000, help="test reviews")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the promotion")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed calls per latency figure (their median is shown)")
    parser.add_argument("--folder", help="where the built study and the exports go "
                        "(default: a temporary folder)")
    return parser.parse_args(argv)


def sweep(folder: Path, *args: str) -> str:
    """Run `python -m sweep ARGS` in `folder`; its output, or SystemExit if it failed."""
    done = subprocess.run([sys.executable, "-m", "sweep", *args], cwd=folder,
                          capture_output=True, text=True, env=this_checkout())
    if done.returncode != 0:
        raise SystemExit(f"bench.ensemble: `sweep {' '.join(args)}` failed "
                         f"(exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-2000:]}")
    return done.stdout


def build_study(folder: Path, args: argparse.Namespace) -> None:
    """A 2-trial search and its best configuration promoted over `args.seeds` seeds, stored
    in `folder` as study STUDY."""
    (folder / "exp.toml").write_text(EXPERIMENT.format(
        data=Path(args.data).resolve(), train=args.train, val=args.val, test=args.test))
    print(f"bench.ensemble: searching 2 trials, then promoting the best over {args.seeds} "
          f"seeds in {folder}", flush=True)
    stores = ["--study", STUDY, "--storage", args.storage, "--tracking-uri", args.tracking_uri]
    sweep(folder, "run", "--trials", "2", "--experiment", "exp.toml", *stores)
    sweep(folder, "promote", "--top", "1", "--seeds", str(args.seeds), *stores)


def test_split(args: argparse.Namespace, folder: Path):
    """The promotion's test split, the class names and the winner's summary, the split
    loaded as `sweep promote` loaded it."""
    from sweep.experiment import parse_experiment
    from sweep.records import EXPERIMENT_ATTR, WINNER_ATTR
    from sweep.runner import load_experiment_data
    from sweep.study import load_existing_study, open_storage

    study = load_existing_study(args.study, open_storage(args.storage))
    stored = study.user_attrs[EXPERIMENT_ATTR]
    experiment = parse_experiment(stored["text"], folder / stored["path"],
                                  stored.get("data_override"))
    winner = study.user_attrs[WINNER_ATTR]
    dataset = load_experiment_data(experiment, **{
        k: v for k, v in winner.get("fidelity", {}).items() if k.startswith("max_")})
    return dataset.test, dataset.class_names, winner


def median_ms(call, repeats: int) -> float:
    """The median wall time of `call()` in milliseconds, after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(path: Path, test, class_names: list[str], repeats: int) -> dict:
    """Test accuracy of the export at `path` and its warm latency through serving_default."""
    import tensorflow as tf

    from bertclf.run.evaluate import evaluate_export
    from bertclf.run.export import load_model

    accuracy = evaluate_export(path, test, class_names)["accuracy"]
    serve = load_model(path).signatures["serving_default"]
    batch, one = tf.constant(test.texts[:32]), tf.constant(test.texts[32:33])
    return {"accuracy": accuracy,
            "batch_ms": median_ms(lambda: serve(text=batch)["logits"].numpy(), repeats),
            "one_ms": median_ms(lambda: serve(text=one)["logits"].numpy(), repeats)}


def table(single: dict, ensemble: dict, winner: dict, tests: int) -> str:
    """The printed comparison."""
    seeds = winner["seeds"]
    rows = [("model", "test accuracy", "batch of 32", "one text"),
            (f"single (seed {winner['best_seed']})", f"{single['accuracy']:.4f}",
             f"{single['batch_ms']:.1f} ms", f"{single['one_ms']:.1f} ms"),
            (f"ensemble of {len(seeds)} (seeds {', '.join(map(str, seeds))})",
             f"{ensemble['accuracy']:.4f}", f"{ensemble['batch_ms']:.1f} ms",
             f"{ensemble['one_ms']:.1f} ms"),
            ("gain / cost", f"{ensemble['accuracy'] - single['accuracy']:+.4f}",
             f"{ensemble['batch_ms'] / single['batch_ms']:.2f}x",
             f"{ensemble['one_ms'] / single['one_ms']:.2f}x")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"test split: {tests} reviews; the seed models alone (promotion): test "
                 f"accuracy {winner['test_accuracy_mean']:.4f} mean, "
                 f"{min(winner['test_accuracy']):.4f}-{max(winner['test_accuracy']):.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sweep.study import DEFAULT_STORAGE
    from sweep.tracking import DEFAULT_TRACKING_URI

    started, load = time.monotonic(), os.getloadavg()[0]
    args = parse_args(argv)
    scratch = Path(args.folder or tempfile.mkdtemp(prefix="bench-ensemble-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if args.study:  # the stores as given, relative to this folder
            folder = Path.cwd()
            args.storage = args.storage or DEFAULT_STORAGE
            args.tracking_uri = args.tracking_uri or DEFAULT_TRACKING_URI
        else:
            folder, args.study = scratch, STUDY
            args.storage = args.storage or f"sqlite:///{scratch / 'optuna.db'}"
            args.tracking_uri = args.tracking_uri or f"sqlite:///{scratch / 'mlflow.db'}"
            build_study(folder, args)
        report(args, folder, scratch, load)
    finally:
        if not args.folder:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wall time {(time.monotonic() - started) / 60:.1f} min")
    return 0


def report(args: argparse.Namespace, folder: Path, scratch: Path, load: float) -> None:
    """Export the single model and the ensemble into `scratch`, measure both, print."""
    stores = ["--study", args.study, "--storage", args.storage,
              "--tracking-uri", args.tracking_uri]
    for name, extra in (("single", []), ("ensemble", ["--ensemble"])):
        sweep(folder, "best", *stores, "--export", str(scratch / f"export-{name}"), "--force",
              *extra)
    from bertclf.quiet import load_tensorflow

    load_tensorflow()  # without TensorFlow's start-up lines
    test, class_names, winner = test_split(args, folder)
    results = {name: measure(scratch / f"export-{name}", test, class_names, args.repeats)
               for name in ("single", "ensemble")}
    print(table(results["single"], results["ensemble"], winner, len(test)))
    from bench.run import machine

    host = machine()
    print(f"machine: {host.get('cpu')}, {host['cores']} cores, {host.get('memory')}, "
          f"GPUs {host['gpus'] or 'none'}, TensorFlow {host['tensorflow']}; load average "
          f"{load:.1f} at the start, {host['load_average_at_start'][0]:.1f} at the end")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
