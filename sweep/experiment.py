"""Experiment files: the data, the search space, the budget, the pruner and the promotion stage
of a sweep (README, "Experiment files", shows every key)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bertclf.config import TrainConfig, field_types
from bertclf.encoder_map import OFFLINE_HINT, get_encoder, load_map, unreachable
from bertclf.errors import UserError, parse_file

DATA_KEYS = {"path", "max_examples", "max_train_examples", "max_val_examples",
             "max_test_examples", "text_column", "label_column", "val_fraction", "split_seed"}
STUDY_KEYS = {"trials", "timeout_minutes", "pruner", "sampler_seed", "name", "keep_models"}
# The full-fidelity stage: how many configurations, how many seeds, and what changes.
PROMOTE_FIDELITY = {"epochs", "patience", "seq_len", "max_examples", "max_train_examples",
                    "max_val_examples", "max_test_examples", "eval_every", "eval_examples"}
PROMOTE_KEYS = {"top", "seeds"} | PROMOTE_FIDELITY
SEARCHABLE = {f.name for f in fields(TrainConfig)} - DATA_KEYS - {"data"}
DEFAULT_SPLIT_SEED = TrainConfig.seed


@dataclass(frozen=True)
class Range:
    """A numeric interval to sample from: ints if both ends are ints."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Pruner:
    """Which Optuna pruner stops hopeless trials after an epoch, and its settings."""

    kind: str = "hyperband"
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Promotion:
    """The promotion stage: the `top` configurations re-trained with `seeds` seeds each, with
    `fidelity` (data caps, epochs) replacing the search's values."""

    top: int = 3
    seeds: int = 3
    fidelity: dict = field(default_factory=dict)


@dataclass
class Experiment:
    """A parsed, checked experiment file."""

    path: Path
    text: str  # the file as read: a study keeps it, so that later commands need no file
    data_options: dict[str, Any]  # [data]: path (absolute or "imdb"), caps, columns, seed
    space: dict[str, Any]  # name -> fixed value | list (categorical) | Range
    trials: int = 10
    timeout_minutes: float | None = None
    pruner: Pruner = field(default_factory=Pruner)
    sampler_seed: int = 0
    study_name: str = ""
    keep_models: int | None = None  # None: keep every trial's logged model
    promotion: Promotion = field(default_factory=Promotion)
    data_override: str | None = None

    @property
    def split_seed(self) -> int:
        """The seed of the validation split and samples, the same for every trial: [data]
        split_seed, else a fixed search.seed, else TrainConfig's default seed."""
        seed = self.space.get("seed")
        fixed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        return self.data_options.get("split_seed", fixed if fixed is not None else
                                     DEFAULT_SPLIT_SEED)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial may run (the pruners' resource)."""
        epochs = self.space.get("epochs", TrainConfig.epochs)
        return int(max(_candidates(epochs)))

    def base_config(self, **values: Any) -> TrainConfig:
        """A TrainConfig from the data section plus `values`."""
        options = {k: v for k, v in self.data_options.items() if k != "split_seed"}
        return TrainConfig.from_dict({"data": options.pop("path"), **options,
                                      "split_seed": self.split_seed, **values})


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"experiment {path}: {message}")


def _check_keys(path: Path, section: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(path, f"unknown key(s) in [{section}]: {', '.join(unknown)} "
                    f"(allowed: {', '.join(sorted(allowed))})")


def _parse_dimension(path: Path, name: str, value: Any) -> Any:
    if isinstance(value, dict):
        _check_keys(path, f"search.{name}", value, {"low", "high", "log", "step"})
        if not {"low", "high"} <= value.keys():
            raise _fail(path, f"search.{name} needs low and high")
        low, high = value["low"], value["high"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise _fail(path, f"search.{name}: low and high must be numbers")
        if low > high:
            raise _fail(path, f"search.{name}: low {low} is above high {high}")
        if value.get("log") and low <= 0:
            raise _fail(path, f"search.{name}: a log range needs low > 0")
        return Range(low, high, bool(value.get("log", False)), value.get("step"))
    if isinstance(value, list) and not value:
        raise _fail(path, f"search.{name}: empty list of choices")
    return value


def _candidates(value: Any) -> list[Any]:
    """The values to check a dimension with: its choices or its two ends."""
    if isinstance(value, Range):
        return [value.low, value.high]
    return value if isinstance(value, list) else [value]


def _check_type(path: Path, where: str, name: str, value: Any) -> None:
    expected = field_types()[name]
    allowed = (int, float) if expected is float else (expected,)
    if not isinstance(value, allowed) or (expected is not bool and isinstance(value, bool)):
        raise _fail(path, f"{where}: {value!r} is not of type {expected.__name__}")


def _check_values(path: Path, experiment: Experiment) -> None:
    """Every choice and range end, and the promotion stage, must make a valid TrainConfig."""
    for name, value in experiment.space.items():
        for candidate in _candidates(value):
            _check_type(path, f"search.{name}", name, candidate)
            try:
                experiment.base_config(**{name: candidate}).validate()
            except UserError as e:
                raise _fail(path, f"search.{name} = {candidate!r}: {e}") from None
    for name, value in experiment.promotion.fidelity.items():
        _check_type(path, f"promote.{name}", name, value)
        try:
            experiment.base_config(**{name: value}).validate()
        except UserError as e:
            raise _fail(path, f"promote.{name} = {value!r}: {e}") from None


def _parse_pruner(path: Path, value: Any) -> Pruner:
    from sweep.study import PRUNERS

    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise _fail(path, 'study.pruner must be a name or a table with kind = "..."')
    settings = {k: v for k, v in value.items() if k != "kind"}
    if value["kind"] not in PRUNERS:
        raise _fail(path, f"study.pruner must be one of {', '.join(PRUNERS)}")
    return Pruner(value["kind"], settings)


def _parse_promotion(path: Path, table: Any) -> Promotion:
    if not isinstance(table, dict):
        raise _fail(path, "[promote] must be a table")
    _check_keys(path, "promote", table, PROMOTE_KEYS)
    for key in ("top", "seeds"):
        value = table.get(key, getattr(Promotion, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(path, f"promote.{key} must be a positive integer")
    return Promotion(table.get("top", Promotion.top), table.get("seeds", Promotion.seeds),
                     {k: v for k, v in table.items() if k in PROMOTE_FIDELITY})


def load_experiment(path: str | Path, data_override: str | None = None) -> Experiment:
    """Read and check an experiment file; `data_override` replaces its data path."""
    path = Path(path)
    text = parse_file(path, str, "TOML", lambda reason: _fail(path, reason))
    return parse_experiment(text, path.resolve(), data_override)


def parse_experiment(text: str, path: Path, data_override: str | None = None) -> Experiment:
    """Parse and check an experiment file's `text`; relative paths are against `path`'s folder."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _fail(path, f"not valid TOML ({e})") from None
    _check_keys(path, "top level", table, {"data", "search", "study", "promote", "description"})
    data = dict(table.get("data", {}))
    _check_keys(path, "data", data, DATA_KEYS)
    if data_override:
        data["path"] = data_override
    if "path" not in data:
        raise _fail(path, "[data] needs a path (or pass --data)")
    if data["path"] != "imdb" and not data_override:
        data["path"] = str((path.parent / data["path"]).resolve())

    search = table.get("search", {})
    _check_keys(path, "search", search, SEARCHABLE)
    space = {name: _parse_dimension(path, name, value) for name, value in search.items()}
    if isinstance(space.get("encoder_map"), str):
        space["encoder_map"] = str((path.parent / space["encoder_map"]).expanduser().resolve())
    _resolve_encoders(path, space)

    study = table.get("study", {})
    _check_keys(path, "study", study, STUDY_KEYS)
    experiment = Experiment(path=path, text=text, data_options=data, space=space,
                            trials=study.get("trials", 10),
                            timeout_minutes=study.get("timeout_minutes"),
                            pruner=_parse_pruner(path, study.get("pruner", "hyperband")),
                            sampler_seed=study.get("sampler_seed", 0),
                            study_name=study.get("name", path.stem),
                            keep_models=study.get("keep_models"),
                            promotion=_parse_promotion(path, table.get("promote", {})),
                            data_override=data_override)
    if not isinstance(experiment.trials, int) or experiment.trials < 1:
        raise _fail(path, "study.trials must be a positive integer")
    keep = experiment.keep_models
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        raise _fail(path, "study.keep_models must be a positive integer")
    split_seed = data.get("split_seed", 0)
    if not isinstance(split_seed, int) or isinstance(split_seed, bool) or split_seed < 0:
        raise _fail(path, "data.split_seed must be a non-negative integer")
    _check_values(path, experiment)
    from sweep.study import make_pruner

    try:
        make_pruner(experiment.pruner, experiment.max_epochs)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"study.pruner: {e}") from None
    return experiment


def drop_unreachable_encoders(experiment: Experiment) -> dict[str, str]:
    """Take the encoders that cannot be loaded here (a TF Hub handle neither cached nor
    answering, a missing folder) out of the search; returns them with the reason. Raises
    UserError when none is left."""
    from concurrent.futures import ThreadPoolExecutor

    encoder_map = experiment.space.get("encoder_map")
    names = _candidates(experiment.space.get("encoder", TrainConfig.encoder))
    specs = [get_encoder(name, encoder_map) for name in names]

    def reason(spec) -> str | None:
        return unreachable(spec.encoder) or unreachable(spec.preprocess)

    with ThreadPoolExecutor(max_workers=16) as pool:
        dropped = {spec.name: why for spec, why in zip(specs, pool.map(reason, specs),
                                                        strict=True) if why}
    kept = [name for name in names if name not in dropped]
    if not kept:
        listed = "; ".join(f"{name}: {why}" for name, why in dropped.items())
        raise _fail(experiment.path, f"no encoder of the search can be loaded here ({listed}). "
                    f"{OFFLINE_HINT}")
    if dropped and isinstance(experiment.space.get("encoder"), list):
        experiment.space["encoder"] = kept
    return dropped


def _resolve_encoders(path: Path, space: dict[str, Any]) -> None:
    """Expand `encoder = "all"` to the whole map and check every named encoder exists."""
    encoder_map = space.get("encoder_map")
    known = load_map(encoder_map if isinstance(encoder_map, str) else None)
    if space.get("encoder") in ("all", ["all"]):  # the notebook's map: TF Hub models
        space["encoder"] = [n for n, spec in known.items()
                            if not spec.encoder.startswith("builtin:")]
    for name in _candidates(space.get("encoder", "tiny")):
        if name not in known and not (Path(name).expanduser() / "encoder").is_dir():
            raise _fail(path, f"search.encoder: unknown encoder {name!r} "
                        "(`python -m bertclf encoders` lists the map)")
