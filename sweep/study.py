"""The Optuna side: storage (SQLite file by default, RDB URL, journal file or gRPC proxy),
study, pruner, sampler."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import optuna

from bertclf.errors import UserError
from bertclf.masking import mask

DEFAULT_STORAGE = "sqlite:///optuna.db"
GRPC_READY_SECONDS = 10  # how long a command waits for a gRPC storage proxy to answer
OBJECTIVE = "val_accuracy"  # what every study maximises (its name in optuna-dashboard)
T = TypeVar("T")


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URL (Optuna's or MLflow's), else None."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage, a journal file for paths ending in .log/.journal, or the gRPC proxy of
    `sweep storage-server` for grpc://HOST:PORT. Liveness is the sweep's own
    (sweep.ownership), the same for every kind, so Optuna's heartbeat is off."""
    if url.startswith("grpc://"):
        return open_grpc_proxy(url)
    if url.endswith((".log", ".journal")) and "://" not in url:
        backend = optuna.storages.journal.JournalFileBackend(url)
        return optuna.storages.JournalStorage(backend)
    # SQLite waits up to a minute for a lock; pooled server connections are checked before
    # use, so one dropped by the server (a restart, an idle timeout) is replaced, not failed.
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else
                     {"pool_pre_ping": True})
    return retry_schema_race(
        lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs),
        f"Optuna storage {url}", url)


def open_grpc_proxy(url: str) -> optuna.storages.GrpcStorageProxy:
    """The proxy at grpc://HOST:PORT, once it answers; UserError if it does not in
    GRPC_READY_SECONDS (a call to a proxy that is down would fail only at the first trial)."""
    address = url.removeprefix("grpc://").rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad storage URL {url}: expected grpc://HOST:PORT")
    with warnings.catch_warnings():  # Optuna marks the proxy experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host.strip("[]"), port=int(port))
    try:
        proxy.wait_server_ready(timeout=GRPC_READY_SECONDS)
    except ConnectionError:
        proxy.close()
        raise UserError(f"no Optuna storage proxy answers at {url} within "
                        f"{GRPC_READY_SECONDS}s (start one there with `python -m sweep "
                        "storage-server`)") from None
    return proxy


# What the losers of a race to create a new database's tables (or a study's experiment) see.
SCHEMA_RACE = ("already exists", "duplicate key", "alembic_version",
               "expected to match one row", "no such table")


@contextlib.contextmanager
def sqlite_lock(url: str):
    """Hold an exclusive lock beside a SQLite database (threads and processes alike; nothing
    for other URLs): SQLite cannot roll back a schema migration half done, so workers on one
    machine create and upgrade tables one at a time, and its reads are not locked for the
    write that follows, so a queued trial is taken under it (`ask`)."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    lock_path = Path(f"{database}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def retry_schema_race(open_store: Callable[[], T], what: str, url: str,
                      attempts: int = 6) -> T:
    """Call `open_store` on the database at `url`, trying again while it fails the way a
    worker does that starts together with others on a new database (the winner's tables are
    there the next time). Any other failure is a UserError at once."""
    for attempt in itertools.count(1):
        try:
            with sqlite_lock(url):
                return open_store()
        except Exception as e:
            message = str(e).strip() or type(e).__name__
            # A KeyError (a table name) comes from metadata read while a process that does
            # not take the lock, e.g. `mlflow ui`, is still creating the tables.
            race = isinstance(e, KeyError) or any(s in message for s in SCHEMA_RACE)
            if attempt >= attempts or not race:
                raise UserError(mask(f"cannot open {what}: {message.splitlines()[0][:300]}")
                                ) from None
            time.sleep(attempt)


# Pruner kind -> its Optuna class and our defaults. Steps are evaluations (one per epoch, or
# `eval_every`), counted from 1 as in MLflow; median and percentile may stop a trial after any
# evaluation once 3 trials completed.
PRUNERS = {
    "hyperband": (optuna.pruners.HyperbandPruner, {"min_resource": 1, "reduction_factor": 3}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {"min_resource": 1}),
    "median": (optuna.pruners.MedianPruner, {"n_startup_trials": 3, "n_warmup_steps": 1}),
    "percentile": (optuna.pruners.PercentilePruner, {"n_startup_trials": 3,
                                                     "n_warmup_steps": 1}),
    "threshold": (optuna.pruners.ThresholdPruner, {}),
    "none": (optuna.pruners.NopPruner, {}),
}


def make_pruner(pruner, max_steps: int) -> optuna.pruners.BasePruner:
    """The experiment's pruner (its `kind` and `settings`) on each evaluation's accuracy;
    hyperband's resource is the evaluation step, up to the most a trial may run."""
    cls, defaults = PRUNERS[pruner.kind]
    settings = {**defaults, **pruner.settings}
    if pruner.kind == "hyperband":
        settings.setdefault("max_resource", max_steps)
    return cls(**settings)


# Sampler kind -> its Optuna class, our defaults, the settings an experiment may give (with
# their types), and the module it needs that Optuna does not install. TPE always uses the
# constant liar (running trials count as bad, so parallel workers spread out): any storage may
# be shared by several commands, and the lie costs nothing when trials run one at a time.
SAMPLERS = {
    "tpe": (optuna.samplers.TPESampler, {"constant_liar": True, "multivariate": True},
            {"n_startup_trials": int, "n_ei_candidates": int, "multivariate": bool,
             "group": bool}, None),
    "random": (optuna.samplers.RandomSampler, {}, {}, None),
    "gp": (optuna.samplers.GPSampler, {}, {"n_startup_trials": int,
                                           "deterministic_objective": bool}, "torch"),
    "cmaes": (optuna.samplers.CmaEsSampler, {},
              {"n_startup_trials": int, "sigma0": float, "popsize": int,
               "consider_pruned_trials": bool, "use_separable_cma": bool, "with_margin": bool,
               "lr_adapt": bool}, "cmaes"),
}


def make_sampler(sampler, seed: int,
                 check_installed: bool = True) -> optuna.samplers.BaseSampler:
    """The experiment's sampler (its `kind` and `settings`) seeded with `seed`. UserError for a
    setting it does not take, a value of the wrong type, or (`check_installed`) a module it
    needs that is not installed here: Optuna would only fail at the first trial."""
    cls, defaults, allowed, _ = SAMPLERS[sampler.kind]
    for key, value in sampler.settings.items():
        if key not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise UserError(f"sampler {sampler.kind} has no setting {key!r} (settings: "
                            f"{listed}; the seed is study.sampler_seed)")
        kind = allowed[key]
        if not isinstance(value, (int, float) if kind is float else kind) or (
                kind is not bool and isinstance(value, bool)):
            raise UserError(f"sampler {sampler.kind}: {key} = {value!r} is not of type "
                            f"{kind.__name__}")
    if check_installed:
        check_sampler_installed(sampler)
    return cls(seed=seed, **{**defaults, **sampler.settings})


def check_sampler_installed(sampler) -> None:
    """UserError if the sampler needs a module (gp: torch, cmaes: cmaes) not installed here."""
    needs = SAMPLERS[sampler.kind][3]
    if needs and importlib.util.find_spec(needs) is None:
        raise UserError(f"sampler {sampler.kind} needs the {needs} package, which is not "
                        f"installed here (pip install {needs}), or choose another sampler")


def name_objective(study: optuna.Study) -> None:
    """Name the objective (optuna-dashboard shows it); Optuna marks the call experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE])


def open_study(name: str, storage: optuna.storages.BaseStorage, *,
               pruner: optuna.pruners.BasePruner, sampler=None,
               sampler_seed: int = 0) -> tuple[optuna.Study, bool]:
    """Create the study or continue it, and say whether this call created it (exactly one
    of several workers starting at once does). `sampler` is the experiment's sampler spec
    (None: TPE). Its seed moves on with the trial count so that a continued study does not
    propose the first run's points again."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    pruner=pruner)
        name_objective(study)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        if study.metric_names is None:  # made by an older version
            name_objective(study)
        created = False
    from sweep.experiment import Sampler

    study.sampler = make_sampler(sampler or Sampler(), sampler_seed + len(study.trials))
    return study, created


def ask(study: optuna.Study, url: str) -> optuna.Trial:
    """`study.ask()`, taking a queued trial (the defaults, a dead worker's re-run) for one
    asker only: PostgreSQL locks the row it takes; SQLite needs the lock file."""
    with sqlite_lock(url):
        return study.ask()


def check_storage_exists(url: str) -> None:
    """For commands that only read: a SQLite or journal file must already exist."""
    path = sqlite_path(url) or (url if "://" not in url else None)
    if path is not None and not Path(path).is_file():
        raise UserError(f"no Optuna storage at {mask(url)}: run `python -m sweep run` first, "
                        "or pass --storage")


def load_existing_study(name: str | None, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study by name (the only one if `name` is None); UserError if there is none."""
    # A name with a colon is a study's companion (its promotion claims), not a user's study.
    names = [n for n in optuna.get_all_study_names(storage) if ":" not in n]
    if name is None:
        if len(names) != 1:
            raise UserError("no study in the storage" if not names else
                            f"several studies, pick one with --study: {', '.join(names)}")
        name = names[0]
    if name not in names:
        listed = f" (studies: {', '.join(names)})" if names else " (the storage has none)"
        raise UserError(f"no study named {name!r}{listed}")
    return optuna.load_study(study_name=name, storage=storage)


STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
STUDY_NAME_MAX = 128


def check_study_name(name: str) -> str:
    """`name` if it is safe as one folder name (exported/<study>): letters, digits, `.`, `_`
    and `-`, not starting with `.` or `-`, no `..`; else a UserError."""
    if not STUDY_NAME.fullmatch(name) or ".." in name or len(name) > STUDY_NAME_MAX:
        raise UserError(f"study name {name!r} is not allowed: use up to {STUDY_NAME_MAX} "
                        "letters, digits, '.', '_' and '-', not starting with '.' or '-' "
                        "and without '..'")
    return name
