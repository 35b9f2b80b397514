"""Command line: `python -m sweep run|promote|best|trials|check|storage-server`."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from bertclf.cli import command_parser, run_command
from bertclf.errors import UserError
from bertclf.masking import mask
from sweep.ownership import GRACE_SECONDS, HEARTBEAT_SECONDS
from sweep.records import EXPERIMENT_ATTR, RUN_ID_ATTR, TEST_ACCURACY_ATTR, fixed_params
from sweep.study import DEFAULT_STORAGE, check_study_name
from sweep.tracking import DEFAULT_TRACKING_URI

DEFAULT_EXPERIMENT = "experiments/imdb.toml"


def _stores(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"Optuna storage URL (default {DEFAULT_STORAGE}; "
                             "postgresql://... to share a study between machines)")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI}; "
                             "http://HOST:PORT for a tracking server)")


def _liveness(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                        help="seconds between a running trial's heartbeats (default "
                             f"{HEARTBEAT_SECONDS})")
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS,
                        help="seconds without a heartbeat after which another host's running "
                             f"trial counts as dead (default {GRACE_SECONDS}); on this host a "
                             "trial is failed as soon as its worker process is gone")


def _worker_slots(args: argparse.Namespace, workers: int | None) -> list[dict[str, str]]:
    """The worker slots of `sweep run`: --gpus as given (a scheduler's ids may not be visible
    here: one warning line then), else every GPU found here."""
    from sweep.devices import describe_slots, detect_gpus, parse_gpus, worker_slots

    found = detect_gpus()
    gpus = found if args.gpus is None else parse_gpus(args.gpus)
    if gpus and not found:
        print(f"sweep: warning: no GPU found here (CUDA_VISIBLE_DEVICES, nvidia-smi); --gpus "
              f"{args.gpus} is taken as given, TensorFlow runs on the CPU where it finds none",
              file=sys.stderr, flush=True)
    slots = worker_slots(gpus, workers, args.gpus_per_trial, args.trials_per_gpu)
    print(f"sweep: {describe_slots(slots)}", flush=True)
    return slots


def _run(args: argparse.Namespace) -> int:
    from sweep.budget import Clock
    from sweep.experiment import (
        common_reasons,
        drop_unreachable_encoders,
        load_experiment,
        per_encoder,
    )
    from sweep.processes import start_fork_server
    from sweep.runner import Sweep, load_experiment_data
    from sweep.study import make_pruner, open_storage, open_study
    from sweep.trial import PRELOAD

    clock = Clock(0.0)  # the budget's clock starts with the command
    if args.in_process and (args.workers or 1) > 1:
        raise UserError("--in-process runs one trial at a time: drop --workers")
    slots = _worker_slots(args, 1 if args.in_process else args.workers)
    # Bad input is found before anything is written.
    experiment = load_experiment(args.experiment, data_override=args.data)
    name = check_study_name(experiment.study_name if args.study is None else args.study)
    clock.budget_seconds = _budget_seconds(args, experiment)
    if args.control:
        experiment = replace(experiment, promotion=replace(experiment.promotion, control=True))
    dropped = drop_unreachable_encoders(experiment)
    if dropped:
        print(f"sweep: dropped {len(dropped)} encoder(s) that cannot be loaded here "
              f"({common_reasons(dropped)}); searching "
              f"{', '.join(map(str, experiment.space['encoder']))}{per_encoder(dropped)}",
              flush=True)
    dataset = load_experiment_data(experiment)
    if args.plan_only:
        _budget_plan(args, experiment, dataset, _trials_so_far(args.storage, name), clock,
                     len(slots))
        return 0
    storage = open_storage(args.storage)
    seed = args.seed if args.seed is not None else experiment.sampler_seed
    study, created = open_study(name, storage, sampler_seed=seed,
                                pruner=make_pruner(experiment.pruner,
                                                   experiment.max_steps(len(dataset.train))),
                                sampler=experiment.sampler)
    study.set_user_attr(EXPERIMENT_ATTR, {"path": str(experiment.path), "text": experiment.text,
                                          "data_override": experiment.data_override})
    if created:
        from sweep.space import enqueue_defaults

        enqueue_defaults(study, experiment)
    plan = (_budget_plan(args, experiment, dataset, study.get_trials(deepcopy=False), clock,
                         len(slots)) if clock.budget_seconds else None)
    if not args.in_process and not all(slots):  # a slot whose trial processes are forked
        start_fork_server(PRELOAD)  # it imports TensorFlow while the stores open
    tracker = _open_tracker(args.tracking_uri, study, storage, args.grace, created)
    trials = args.trials or experiment.trials
    timeout = args.timeout * 60 if args.timeout else (
        experiment.timeout_minutes * 60 if experiment.timeout_minutes else None)
    print(f"sweep: study {name!r} ({len(study.trials)} trial(s) so far), "
          f"{_more(plan, trials)}, storage {mask(args.storage)}, MLflow "
          f"{mask(args.tracking_uri)}", flush=True)
    sweep = Sweep(experiment, dataset, study, tracker, storage, args.storage,
                  in_process=args.in_process, heartbeat_seconds=args.heartbeat,
                  grace_seconds=args.grace)
    tracker.open_parent(str(experiment.path))
    if dropped:
        tracker.client.set_tag(tracker.parent_run_id, "dropped_encoders", "; ".join(
            f"{name}: {why}" for name, why in dropped.items()))
    if plan:
        from sweep.budget import BudgetRun

        work = BudgetRun(plan, clock, sweep, slots, args).run
    else:
        def work() -> None:
            sweep.run(trials, timeout, slots=slots)
    code = _until_done(tracker, work)
    if code == 0:
        _print_best(study, tracker.ui_link())
    return code


def _more(plan, trials: int) -> str:
    """How many more trials this command runs, as its first line says."""
    if plan is None:
        return f"{trials} more"
    return f"as many more as fit the search's {plan.search_seconds / 60:.1f}m" + (
        f" (at most {plan.inputs.max_trials})" if plan.inputs.max_trials else "")


def _budget_seconds(args: argparse.Namespace, experiment) -> float:
    """The time budget in seconds (--budget, else [study] budget; 0: none), checked against
    the flags it cannot go with."""
    from sweep.budget import parse_duration

    seconds = parse_duration(args.budget) if args.budget else (experiment.budget_seconds or 0.0)
    if args.plan_only and not seconds:
        raise UserError("--plan-only prints a budget's plan: give --budget (or [study] budget)")
    if args.control and not seconds:
        raise UserError("--control is for a budget's promotion (`sweep promote --control` "
                        "otherwise): give --budget")
    if seconds and args.timeout:
        raise UserError("--budget and --timeout both limit the time: give one")
    return seconds


def _trials_so_far(storage_url: str, name: str) -> list:
    """The study's trials if it exists already, without creating a store or a study."""
    import optuna

    from sweep.study import open_storage, sqlite_path

    path = sqlite_path(storage_url)
    if path is not None and not path.is_file():
        return []
    storage = open_storage(storage_url)
    if name not in optuna.get_all_study_names(storage):
        return []
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _budget_plan(args: argparse.Namespace, experiment, dataset, trials: list, clock,
                 parallel: int):
    """Measure (or reuse the measurement), make the budget's plan and print it."""
    from sweep.budget import plan_budget
    from sweep.plan import format_plan

    plan = plan_budget(experiment, dataset, trials, clock.budget_seconds, clock.used,
                       max_trials=args.trials, parallel=parallel)
    print(format_plan(plan), flush=True)
    return plan


def _open_tracker(tracking_uri: str, study, storage, grace: float, created: bool = False):
    """The study's MLflow tracker, after failing what dead workers left behind."""
    from sweep.runner import requeue_dead_trials
    from sweep.tracking import Tracker

    requeue_dead_trials(study, storage, grace)
    tracker = Tracker(tracking_uri, study, created)
    fixed = tracker.reconcile()
    if fixed:
        print(f"sweep: ended {fixed} run(s) left RUNNING by a dead worker as FAILED")
    print(mask(f"sweep: MLflow UI: {tracker.ui_link()}"), flush=True)
    return tracker


def _until_done(tracker, work) -> int:
    """Run `work`, then close the parent run as it ended: Ctrl-C (or a scheduler's SIGTERM)
    ends every run in progress as failed and exits 130; the study can be continued."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    status = "FAILED"
    try:
        work()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("sweep: interrupted; the runs in progress were recorded as failed. "
              "Run the same command again to continue the study.", file=sys.stderr)
        return 130
    finally:
        tracker.reconcile()
        tracker.close_parent(status)
    return 0


def _label(trial) -> str:
    return trial if isinstance(trial, str) else f"trial {trial}"


def _print_best(study, ui_link: str | None = None) -> None:
    print(mask("\n".join(_best_lines(study, ui_link))))


def _best_lines(study, ui_link: str | None) -> list[str]:
    """What `best` (and the end of `run`) says about the chosen model."""
    from sweep.export import chosen_model, search_margin

    try:
        chosen = chosen_model(study)
    except UserError as e:
        return [f"sweep: {e}" if "no completed trial" not in str(e)
                else "sweep: no trial has completed yet"]
    best = study.best_trial
    lines = [f"best trial: {best.number} of study {study.study_name!r}",
             f"  val_accuracy:  {best.value:.4f}",
             f"  test_accuracy: {best.user_attrs.get(TEST_ACCURACY_ATTR, float('nan')):.4f}",
             f"  mlflow run id: {best.user_attrs.get(RUN_ID_ATTR)}"]
    lines += [f"  {key}: {value}" for key, value in {**best.params, **fixed_params(best)}.items()]
    defaults = search_margin(study)
    if defaults:
        lines.append(f"  over the defaults (trial {defaults['trial']}, same fidelity, one "
                     f"seed): val_accuracy {defaults['val_accuracy']:+.4f}, test_accuracy "
                     f"{defaults['test_accuracy']:+.4f}")
    if chosen.promotion:
        p = chosen.promotion
        lines.append(f"promoted winner: {_label(p['trial'])}, over seeds {p['seeds']}: "
                     f"val_accuracy {p['val_accuracy_mean']:.4f} ± {p['val_accuracy_std']:.4f}, "
                     f"test_accuracy {p['test_accuracy_mean']:.4f} ± "
                     f"{p['test_accuracy_std']:.4f} (mean ± standard deviation); exported "
                     f"model: seed {p['best_seed']} "
                     f"(run {p['run_id']})")
        if "margin" in p:
            m = p["margin"]
            lines.append(f"  over the defaults (promoted with seeds {p['control']['seeds']}): "
                         f"val_accuracy "
                         f"{m['val_accuracy']:+.4f} ± {m['val_accuracy_se']:.4f}, test_accuracy "
                         f"{m['test_accuracy']:+.4f} ± {m['test_accuracy_se']:.4f} "
                         "(± standard error)")
    if ui_link:
        lines.append(f"sweep: MLflow UI: {ui_link}")
    return lines


def _load(args: argparse.Namespace, with_storage: bool = False):
    """The study that --study names (and the storage, if asked)."""
    from sweep.study import check_storage_exists, load_existing_study, open_storage

    if args.study is not None:
        check_study_name(args.study)
    check_storage_exists(args.storage)
    storage = open_storage(args.storage)
    study = load_existing_study(args.study, storage)
    return (study, storage) if with_storage else study


def _best(args: argparse.Namespace) -> int:
    from sweep.tracking import study_ui_link

    study = _load(args)
    if args.ensemble and args.export is None and not args.register:
        raise UserError("--ensemble goes with --export or --register")
    _print_best(study, study_ui_link(args.tracking_uri, study.study_name))
    exported = None
    if args.export is not None:
        from sweep.export import export_chosen

        out = Path(args.export or Path("exported") / check_study_name(study.study_name))
        exported = export_chosen(study, out, args.force, args.tracking_uri, args.ensemble)
    if args.register:
        from sweep.export import register_chosen

        # An ensemble exported just now is registered as it is, not built a second time.
        register_chosen(study, args.register, args.alias, args.tracking_uri, args.ensemble,
                        exported if args.ensemble else None)
    return 0


def _promote(args: argparse.Namespace) -> int:
    from sweep.experiment import parse_experiment
    from sweep.promote import Promotion

    study, storage = _load(args, with_storage=True)
    stored = study.user_attrs.get(EXPERIMENT_ATTR)
    if not stored:
        raise UserError(f"study {study.study_name!r} does not record its experiment file "
                        "(it was not made by `sweep run`); run `sweep run` on it once")
    # Another host has its own copies of the data and the encoder map: --data, --encoder-map.
    experiment = parse_experiment(stored["text"], Path(stored["path"]),
                                  args.data or stored.get("data_override"), args.encoder_map)
    top = args.top or experiment.promotion.top
    seeds = args.seeds or experiment.promotion.seeds
    tracker = _open_tracker(args.tracking_uri, study, storage, args.grace)
    promotion = Promotion(experiment, study, tracker, storage, top, seeds,
                          in_process=args.in_process, workers=args.workers,
                          heartbeat_seconds=args.heartbeat, grace_seconds=args.grace,
                          storage_url=args.storage,
                          control_seeds=seeds if args.control or experiment.promotion.control
                          else 0)
    tracker.open_parent(stored["path"])
    return _until_done(tracker, promotion.run)


def _trials(args: argparse.Namespace) -> int:
    import pandas as pd

    from sweep.study import OBJECTIVE

    study = _load(args)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params",
                                          "user_attrs"))
    params = sorted(c for c in frame.columns if c.startswith("params_"))
    duration = frame["duration"].dt.total_seconds().round(1) if "duration" in frame else None
    table = pd.DataFrame({
        "number": frame.get("number"), "state": frame.get("state"),
        **{name.removeprefix("params_"): frame[name] for name in params},
        # a study that names its objective calls the column value_<name>
        "val_accuracy": frame.get(f"value_{OBJECTIVE}", frame.get("value")),
        "test_accuracy": frame.get(f"user_attrs_{TEST_ACCURACY_ATTR}"), "duration_s": duration,
    }, index=frame.index)
    if args.csv is not None:
        table.to_csv(sys.stdout if args.csv == "-" else args.csv, index=False)
        return 0
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(table.to_string(index=False))
    return 0


def _check(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from sweep.agreement import disagreements

    study = _load(args)
    found = disagreements(study, MlflowClient(args.tracking_uri))
    for line in found:
        print(line)
    print(f"sweep: {len(study.trials)} trial(s): "
          + (f"{len(found)} disagreement(s) between the stores" if found else
             "Optuna and MLflow agree on every one"))
    return 1 if found else 0


def _storage_server(args: argparse.Namespace) -> int:
    from sweep.storage_server import serve

    serve(args.storage, args.host, args.port, args.threads)
    return 0


def _study_command(commands, name: str, run, help: str) -> argparse.ArgumentParser:
    """A command on an existing study: --study and the store flags."""
    parser = commands.add_parser(name, help=help)
    parser.add_argument("--study", help="study name (default: the only one)")
    _stores(parser)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser, commands = command_parser("python -m sweep", __doc__)

    run = commands.add_parser("run", help="run (or continue) a study")
    run.add_argument("--trials", type=int, help="how many more trials (default: the "
                     "experiment's study.trials)")
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                     help=f"experiment file (default {DEFAULT_EXPERIMENT})")
    run.add_argument("--study", help="study name (default: the experiment's)")
    run.add_argument("--data", help="data path overriding the experiment's")
    run.add_argument("--timeout", type=float, help="time limit of the search in minutes")
    run.add_argument("--budget", metavar="DURATION",
                     help="from data to exported model within DURATION (4h, 90m, 1h30m, 45s; a "
                          "number: minutes): plan, search, promote, export (also [study] "
                          "budget); --trials is then an upper bound")
    run.add_argument("--plan-only", action="store_true",
                     help="with a budget: print its plan and exit")
    run.add_argument("--control", action="store_true",
                     help="with a budget: the promotion also re-trains the tool's defaults "
                          "with the same seeds, or fewer where the budget affords no more "
                          "(also [promote] control = true)")
    run.add_argument("--seed", type=int, help="sampler seed")
    run.add_argument("--workers", type=int,
                     help="trial processes running at once (the --trials total is exact; "
                          "default: one per worker slot the GPUs give, 1 without GPUs)")
    run.add_argument("--gpus", metavar="LIST",
                     help="GPU ids for the trials, e.g. 0,1,2,3, or none (default: every GPU "
                          "found here); taken as given, even where none is found")
    run.add_argument("--gpus-per-trial", type=int, default=1, metavar="N",
                     help="GPUs each trial process is given (default 1)")
    run.add_argument("--trials-per-gpu", type=int, default=1, metavar="N",
                     help="trial processes sharing one GPU group (default 1)")
    _liveness(run)
    run.add_argument("--in-process", action="store_true",
                     help="run trials in this process (debugging; memory grows)")
    _stores(run)
    run.set_defaults(run=_run)

    promote = _study_command(commands, "promote", _promote, "re-train the best "
                             "configurations over seeds at full fidelity")
    promote.add_argument("--top", type=int, help="how many configurations (default: the "
                         "experiment's promote.top)")
    promote.add_argument("--seeds", type=int, help="training seeds per configuration "
                         "(default: the experiment's promote.seeds)")
    promote.add_argument("--in-process", action="store_true",
                         help="train in this process (debugging; memory grows)")
    promote.add_argument("--data", help="this host's copy of the data (default: the path "
                         "the study's experiment file gave)")
    promote.add_argument("--encoder-map", help="this host's copy of the experiment's encoder "
                         "map file")
    promote.add_argument("--control", action="store_true",
                         help="also re-train the tool's defaults with the same seeds, to show "
                              "what the search added (also [promote] control = true)")
    promote.add_argument("--workers", type=int, default=1,
                         help="runs trained at once; promotes on other hosts share the work")
    _liveness(promote)

    best = _study_command(commands, "best", _best, "show, export or register the chosen model")
    best.add_argument("--export", nargs="?", const="", metavar="DIR",
                      help="write its SavedModel to DIR (default exported/<study>/)")
    best.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    best.add_argument("--ensemble", action="store_true",
                      help="export (or register) one model that averages the logits of the "
                           "promoted winner's seed models (N seeds: N times the compute)")
    best.add_argument("--register", metavar="NAME",
                      help="register it in the MLflow Model Registry under NAME")
    best.add_argument("--alias", default="champion",
                      help="the alias --register points at the new version (default champion)")

    trials = _study_command(commands, "trials", _trials, "list the trials of a study")
    trials.add_argument("--csv", nargs="?", const="-", metavar="PATH",
                        help="write CSV to PATH (default: standard output)")
    _study_command(commands, "check", _check, "check that Optuna and MLflow agree on every "
                   "trial (exit status 1 if not)")

    server = commands.add_parser("storage-server", help="serve an RDB storage to many workers "
                                 "through Optuna's gRPC proxy (--storage grpc://HOST:PORT)")
    server.add_argument("--storage", required=True,
                        help="the RDB storage it serves (postgresql://... or sqlite:///...)")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                        "127.0.0.1; 0.0.0.0 for other hosts: no TLS nor authentication)")
    server.add_argument("--threads", type=int, default=10,
                        help="requests served at once (default 10, Optuna's)")
    server.set_defaults(run=_storage_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args = build_parser().parse_args(argv)
    for flag in ("trials", "workers", "heartbeat", "top", "seeds", "gpus_per_trial",
                 "trials_per_gpu", "threads"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            print(f"sweep: error: --{flag.replace('_', '-')} must be at least 1",
                  file=sys.stderr)
            return 2
    return run_command("sweep", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
