"""Experiment files: the data, the search space, the budget and the pruner of a sweep.

    [data]                      # where and how much (relative paths: against this file)
    path = "../data/reviews.tsv"
    max_examples = 300

    [search]                    # any TrainConfig field: a value fixes it,
    encoder = ["tiny"]          # a list is a categorical choice ("all": the whole map),
    lr = { low = 1e-4, high = 1e-2, log = true }   # a table is a range (ints stay ints)

    [study]
    trials = 30                 # default for --trials
    timeout_minutes = 60        # optional time budget
    pruner = "hyperband"        # hyperband | median | none
    sampler_seed = 0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bertclf.config import TrainConfig
from bertclf.encoders import load_map
from bertclf.errors import UserError

DATA_KEYS = {"path", "max_examples", "max_train_examples", "max_val_examples",
             "max_test_examples", "text_column", "label_column", "val_fraction"}
STUDY_KEYS = {"trials", "timeout_minutes", "pruner", "sampler_seed", "name"}
PRUNERS = ("hyperband", "median", "none")
SEARCHABLE = {f.name for f in fields(TrainConfig)} - DATA_KEYS - {"data"}


@dataclass(frozen=True)
class Range:
    """A numeric interval to sample from: ints if both ends are ints."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass
class Experiment:
    """A parsed, checked experiment file."""

    path: Path
    data: dict[str, Any]
    space: dict[str, Any]  # name -> fixed value | list (categorical) | Range
    trials: int = 10
    timeout_minutes: float | None = None
    pruner: str = "hyperband"
    sampler_seed: int = 0
    study_name: str = ""

    def base_config(self, **values: Any) -> TrainConfig:
        """A TrainConfig from the data section plus `values`."""
        data = dict(self.data)
        return TrainConfig.from_dict({"data": data.pop("path"), **data, **values})


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


def _check_values(path: Path, experiment: Experiment) -> None:
    """Every choice and range end must make a valid TrainConfig."""
    for name, value in experiment.space.items():
        for candidate in _candidates(value):
            expected = {f.name: f.type for f in fields(TrainConfig)}[name]
            type_name = str(expected).split("|")[0].strip()
            ok_types = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
            if type_name in ok_types and (not isinstance(candidate, ok_types[type_name])
                                          or (type_name != "bool" and isinstance(candidate, bool))):
                raise _fail(path, f"search.{name}: {candidate!r} is not of type {type_name}")
            try:
                experiment.base_config(**{name: candidate}).validate()
            except UserError as e:
                raise _fail(path, f"search.{name} = {candidate!r}: {e}") from None


def load_experiment(path: str | Path, data_override: str | None = None) -> Experiment:
    """Read and check an experiment file; `data_override` replaces its data path."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid TOML ({e})") from None
    _check_keys(path, "top level", table, {"data", "search", "study", "description"})
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
    experiment = Experiment(path=path, data=data, space=space,
                            trials=study.get("trials", 10),
                            timeout_minutes=study.get("timeout_minutes"),
                            pruner=study.get("pruner", "hyperband"),
                            sampler_seed=study.get("sampler_seed", 0),
                            study_name=study.get("name", path.stem))
    if experiment.pruner not in PRUNERS:
        raise _fail(path, f"study.pruner must be one of {', '.join(PRUNERS)}")
    if not isinstance(experiment.trials, int) or experiment.trials < 1:
        raise _fail(path, "study.trials must be a positive integer")
    _check_values(path, experiment)
    return experiment


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
