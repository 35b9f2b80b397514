"""Command line: `python -m sweep run|best|trials`."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from bertclf.__main__ import ArgumentParser, run_command
from bertclf.errors import UserError
from sweep.study import DEFAULT_STORAGE, HEARTBEAT_SECONDS
from sweep.tracking import DEFAULT_TRACKING_URI

DEFAULT_EXPERIMENT = "experiments/imdb.toml"
RELOAD_CHECK = """
import sys, tensorflow as tf, tensorflow_text
model = tf.saved_model.load(sys.argv[1])
logits = model(tf.constant(["a wonderful film", "a dull, boring mess"])).numpy()
assert logits.shape[0] == 2, logits.shape
print(logits.tolist())
"""


def _stores(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"Optuna storage URL (default {DEFAULT_STORAGE}; "
                             "postgresql://... to share a study between machines)")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI}; "
                             "http://HOST:PORT for a tracking server)")


def _run(args: argparse.Namespace) -> int:
    import optuna

    from sweep.experiment import load_experiment
    from sweep.runner import Sweep, load_experiment_data
    from sweep.study import open_storage, open_study
    from sweep.tracking import Tracker

    if args.workers > 1 and args.in_process:
        raise UserError("--in-process runs one trial at a time: drop --workers")
    # Bad input is found before anything is written.
    experiment = load_experiment(args.experiment, data_override=args.data)
    dataset = load_experiment_data(experiment)
    name = args.study or experiment.study_name
    storage = open_storage(args.storage, heartbeat=args.heartbeat)
    seed = args.seed if args.seed is not None else experiment.sampler_seed
    study, created = open_study(name, storage, pruner=experiment.pruner, sampler_seed=seed)
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    tracker = Tracker(args.tracking_uri, study, created)
    fixed = tracker.reconcile()
    if fixed:
        print(f"sweep: ended {fixed} run(s) left RUNNING by a dead worker as FAILED")
    trials = args.trials or experiment.trials
    timeout = args.timeout * 60 if args.timeout else (
        experiment.timeout_minutes * 60 if experiment.timeout_minutes else None)
    print(f"sweep: study {name!r} ({len(study.trials)} trial(s) so far), "
          f"{trials} more, storage {args.storage}, MLflow {args.tracking_uri}", flush=True)
    sweep = Sweep(experiment, dataset, study, tracker, args.storage, in_process=args.in_process)
    tracker.open_parent(str(experiment.path))
    # A scheduler's SIGTERM ends the sweep as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sweep.run(trials, timeout, workers=args.workers)
    except KeyboardInterrupt:
        _close(study, storage, tracker, "KILLED")
        print("sweep: interrupted; the trial in progress was recorded as failed. "
              "Run the same command again to continue the study.", file=sys.stderr)
        return 130
    except BaseException:
        _close(study, storage, tracker, "FAILED")
        raise
    _close(study, storage, tracker, "FINISHED")
    _print_best(study)
    return 0


def _close(study, storage, tracker, status: str) -> None:
    """Fail trials of dead workers, end their runs, and end the parent run."""
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    tracker.reconcile()
    tracker.close_parent(status)


def _print_best(study) -> None:
    try:
        best = study.best_trial
    except ValueError:
        print("sweep: no trial has completed yet")
        return
    print(f"best trial: {best.number} of study {study.study_name!r}")
    print(f"  val_accuracy:  {best.value:.4f}")
    print(f"  test_accuracy: {best.user_attrs.get('test_accuracy', float('nan')):.4f}")
    print(f"  mlflow run id: {best.user_attrs.get('mlflow_run_id')}")
    for key, value in {**best.params, **_fixed(best)}.items():
        print(f"  {key}: {value}")


def _fixed(trial) -> dict:
    return {k.removeprefix("fixed."): v for k, v in trial.user_attrs.items()
            if k.startswith("fixed.")}


def _load(args: argparse.Namespace):
    from sweep.study import check_storage_exists, load_existing_study, open_storage

    check_storage_exists(args.storage)
    return load_existing_study(args.study, open_storage(args.storage, heartbeat=None))


def _export(study, trial, out: Path, force: bool, tracking_uri: str) -> None:
    import mlflow

    from bertclf.outdir import check_out_dir, make_out_dir

    model_uri = trial.user_attrs.get("model_uri")
    if not model_uri:
        raise UserError(f"trial {trial.number} has no logged model to export")
    check_out_dir(out, force)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sweep-export-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        shutil.copytree(local / "artifacts" / "saved_model", make_out_dir(out, force),
                        dirs_exist_ok=True)
    check = subprocess.run([sys.executable, "-c", RELOAD_CHECK, str(out)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"exported model at {out} does not reload: {check.stderr[-500:]}")
    card = {
        "study": study.study_name, "trial": trial.number,
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"), "model_uri": model_uri,
        "params": {**_fixed(trial), **trial.params},
        "metrics": {"val_accuracy": trial.value,
                    **{k: trial.user_attrs.get(k) for k in ("test_accuracy", "test_loss",
                                                            "best_epoch")}},
    }
    bundled = out / "assets.extra" / "bertclf.json"
    if bundled.is_file():
        extra = json.loads(bundled.read_text())
        card.update(data=extra.get("data"), encoder=extra.get("encoder"),
                    class_names=extra.get("class_names"))
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported trial {trial.number} to {out} (reload checked), "
          f"model card {out / 'model_card.json'}")


def _best(args: argparse.Namespace) -> int:
    study = _load(args)
    _print_best(study)
    if args.export is not None:
        completed = [t for t in study.trials if t.state.name == "COMPLETE"]
        if not completed:
            raise UserError(f"study {study.study_name!r} has no completed trial to export")
        out = Path(args.export or Path("exported") / study.study_name)
        _export(study, study.best_trial, out, args.force, args.tracking_uri)
    return 0


def _trials(args: argparse.Namespace) -> int:
    study = _load(args)
    param_names = sorted({p for t in study.trials for p in t.params})
    header = ["number", "state", *param_names, "val_accuracy", "test_accuracy", "duration_s"]
    rows = []
    for t in study.trials:
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        rows.append([t.number, t.state.name, *[t.params.get(p) for p in param_names],
                     t.value, t.user_attrs.get("test_accuracy"),
                     round(duration, 1) if duration is not None else None])
    if args.csv is not None:
        if args.csv == "-":
            csv.writer(sys.stdout).writerows([header, *rows])
        else:
            with open(args.csv, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([header, *rows])
        return 0
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(pd.DataFrame(rows, columns=header).to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m sweep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    run = commands.add_parser("run", help="run (or continue) a study")
    run.add_argument("--trials", type=int, help="how many more trials (default: the "
                     "experiment's study.trials)")
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                     help=f"experiment file (default {DEFAULT_EXPERIMENT})")
    run.add_argument("--study", help="study name (default: the experiment's)")
    run.add_argument("--data", help="data path overriding the experiment's")
    run.add_argument("--timeout", type=float, help="time budget in minutes")
    run.add_argument("--seed", type=int, help="sampler seed")
    run.add_argument("--workers", type=int, default=1,
                     help="trial processes running at once (the --trials total is exact)")
    run.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                     help="seconds between a running trial's heartbeats; a trial silent for "
                          "3 of them is taken as dead (its worker crashed) and failed")
    run.add_argument("--in-process", action="store_true",
                     help="run trials in this process (debugging; memory grows)")
    _stores(run)
    run.set_defaults(run=_run)

    best = commands.add_parser("best", help="show (and export) the best trial")
    best.add_argument("--study", help="study name (default: the only one)")
    best.add_argument("--export", nargs="?", const="", metavar="DIR",
                      help="write its SavedModel to DIR (default exported/<study>/)")
    best.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    _stores(best)
    best.set_defaults(run=_best)

    trials = commands.add_parser("trials", help="list the trials of a study")
    trials.add_argument("--study", help="study name (default: the only one)")
    trials.add_argument("--csv", nargs="?", const="-", metavar="PATH",
                        help="write CSV to PATH (default: standard output)")
    _stores(trials)
    trials.set_defaults(run=_trials)
    return parser


def main(argv: list[str] | None = None) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args = build_parser().parse_args(argv)
    for flag in ("trials", "workers", "heartbeat"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            print(f"sweep: error: --{flag} must be at least 1", file=sys.stderr)
            return 2
    return run_command("sweep", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
