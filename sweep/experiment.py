"""Experiment files: the data, the search space, the budget, the pruner, the sampler and the
promotion stage of a sweep (README, "Experiment files", shows every key)."""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bertclf.encoders.map import get_encoder, load_map, pretrained, unreachable
from bertclf.errors import UserError, parse_file
from bertclf.quiet import is_verbose
from bertclf.run.config import TrainConfig, evaluations_per_epoch, field_types

DATA_KEYS = {"path", "max_examples", "max_train_examples", "max_val_examples",
             "max_test_examples", "text_column", "label_column", "val_fraction", "split_seed"}
STUDY_KEYS = {"trials", "timeout_minutes", "pruner", "sampler", "sampler_seed", "name",
              "keep_models", "budget"}
# The full-fidelity stage: how many configurations, how many seeds, and what changes.
PROMOTE_FIDELITY = {"epochs", "patience", "seq_len", "max_examples", "max_train_examples",
                    "max_val_examples", "max_test_examples", "eval_every", "eval_examples"}
PROMOTE_KEYS = {"top", "seeds", "control"} | PROMOTE_FIDELITY
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
class Sampler:
    """Which Optuna sampler proposes the trials' configurations, and its settings."""

    kind: str = "tpe"
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Promotion:
    """The promotion stage: the `top` configurations re-trained with `seeds` seeds each, with
    `fidelity` (data caps, epochs) replacing the search's values."""

    top: int = 3
    seeds: int = 3
    fidelity: dict = field(default_factory=dict)
    control: bool = False  # also re-train the tool's defaults, with the same seeds


@dataclass
class Experiment:
    """A parsed, checked experiment file."""

    path: Path
    text: str  # the file as read: a study keeps it, so that later commands need no file
    data_options: dict[str, Any]  # [data]: path (absolute or "imdb"), caps, columns, seed
    space: dict[str, Any]  # name -> fixed value | list (categorical) | Range
    trials: int = 10
    timeout_minutes: float | None = None
    budget_seconds: float | None = None  # [study] budget: `sweep run --budget`'s default
    pruner: Pruner = field(default_factory=Pruner)
    sampler: Sampler = field(default_factory=Sampler)
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

    def candidates(self, name: str) -> list[Any]:
        """The values a trial's `name` may take, as far as bounds go: its choices, its
        range's two ends, or its one value (TrainConfig's default where the space is silent)."""
        return _candidates(self.space.get(name, getattr(TrainConfig, name)))

    def searched(self, name: str) -> bool:
        """Whether the space searches `name` (choices or a range), rather than fixing it."""
        return isinstance(self.space.get(name), Range | list)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial may run (the pruners' resource)."""
        return int(max(self.candidates("epochs")))

    def max_steps(self, train_examples: int) -> int:
        """The most evaluation steps any trial may report (the pruners' resource): the most
        epochs times the most evaluations per epoch (`eval_every`, smallest batch)."""
        steps = math.ceil(train_examples / min(self.candidates("batch_size")))
        return self.max_epochs * max(
            evaluations_per_epoch(self.base_config(eval_every=every), steps)
            for every in self.candidates("eval_every"))

    def defaults_config(self, **values: Any) -> TrainConfig:
        """The tool's defaults with the experiment's fixed values (and `values`)."""
        fixed = {k: v for k, v in self.space.items() if not self.searched(k)}
        return self.base_config(**{**fixed, **values})

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


def _parse_kind(path: Path, key: str, value: Any, kinds: dict) -> tuple[str, dict]:
    """study.pruner or study.sampler: a kind's name, or a table of its kind and settings."""
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise _fail(path, f'study.{key} must be a name or a table with kind = "..."')
    if value["kind"] not in kinds:
        raise _fail(path, f"study.{key} must be one of {', '.join(kinds)}")
    return value["kind"], {k: v for k, v in value.items() if k != "kind"}


def _parse_pruner(path: Path, value: Any) -> Pruner:
    from sweep.study import PRUNERS

    return Pruner(*_parse_kind(path, "pruner", value, PRUNERS))


def _parse_sampler(path: Path, value: Any, space: dict[str, Any]) -> Sampler:
    """The sampler, checked now: its settings, and for CMA-ES a space without categorical
    dimensions (Optuna would sample those at random, one by one). Whether the module it needs
    is installed is load_experiment's check: `promote` re-parses a study's text on hosts that
    never sample."""
    from sweep.study import SAMPLERS, make_sampler

    sampler = Sampler(*_parse_kind(path, "sampler", value, SAMPLERS))
    categorical = sorted(name for name, dim in space.items() if isinstance(dim, list))
    if sampler.kind == "cmaes" and categorical:
        raise _fail(path, f"study.sampler: cmaes cannot search categorical dimensions "
                    f"({', '.join(categorical)}); use tpe, or fix them to one value")
    try:
        make_sampler(sampler, 0, check_installed=False)
    except (UserError, TypeError, ValueError) as e:
        raise _fail(path, f"study.sampler: {e}") from None
    return sampler


def _parse_budget(path: Path, value: Any) -> float | None:
    """study.budget: a duration ("150m", "4h", "1h30m") or a number of minutes."""
    if value is None:
        return None
    from sweep.budget import parse_duration

    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, 'study.budget must be a duration, e.g. "150m" or "4h"')
    try:
        return parse_duration(str(value))
    except UserError as e:
        raise _fail(path, f"study.{e}") from None


def _parse_promotion(path: Path, table: Any) -> Promotion:
    if not isinstance(table, dict):
        raise _fail(path, "[promote] must be a table")
    _check_keys(path, "promote", table, PROMOTE_KEYS)
    for key in ("top", "seeds"):
        value = table.get(key, getattr(Promotion, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(path, f"promote.{key} must be a positive integer")
    if not isinstance(table.get("control", False), bool):
        raise _fail(path, "promote.control must be true or false")
    return Promotion(table.get("top", Promotion.top), table.get("seeds", Promotion.seeds),
                     {k: v for k, v in table.items() if k in PROMOTE_FIDELITY},
                     table.get("control", False))


def load_experiment(path: str | Path, data_override: str | None = None) -> Experiment:
    """Read and check an experiment file for a sweep to run (its sampler's module installed
    here); `data_override` replaces its data path."""
    path = Path(path)
    from sweep.study import check_sampler_installed

    text = parse_file(path, str, "TOML", lambda reason: _fail(path, reason))
    experiment = parse_experiment(text, path.resolve(), data_override)
    try:
        check_sampler_installed(experiment.sampler)
    except UserError as e:
        raise _fail(experiment.path, f"study.sampler: {e}") from None
    return experiment


def parse_experiment(text: str, path: Path, data_override: str | None = None,
                     encoder_map_override: str | None = None) -> Experiment:
    """Parse and check an experiment file's `text`; relative paths are against `path`'s
    folder. The overrides replace its data path and encoder map (another host's copies)."""
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
    if encoder_map_override:
        search = {**search, "encoder_map": str(Path(encoder_map_override).resolve())}
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
                            budget_seconds=_parse_budget(path, study.get("budget")),
                            pruner=_parse_pruner(path, study.get("pruner", "hyperband")),
                            sampler=_parse_sampler(path, study.get("sampler", "tpe"), space),
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
    UserError when none is left: one sentence, each encoder's reason only with --verbose."""
    from concurrent.futures import ThreadPoolExecutor

    encoder_map = experiment.space.get("encoder_map")
    names = experiment.candidates("encoder")
    specs = [get_encoder(name, encoder_map) for name in names]

    def reason(spec) -> str | None:
        return unreachable(spec.encoder) or unreachable(spec.preprocess)

    with ThreadPoolExecutor(max_workers=16) as pool:
        dropped = {spec.name: why for spec, why in zip(specs, pool.map(reason, specs),
                                                        strict=True) if why}
    kept = [name for name in names if name not in dropped]
    if not kept:
        offline = [name for name, spec in load_map(encoder_map).items()
                   if spec.encoder.startswith("builtin:") and not unreachable(spec.encoder)]
        raise _fail(experiment.path, f"none of the search's {len(names)} encoder(s) can be "
                    f"loaded here ({common_reasons(dropped)}); try --experiment "
                    f"experiments/quick.toml, or an encoder that loads offline "
                    f"({', '.join(offline)}){per_encoder(dropped)}")
    if dropped and isinstance(experiment.space.get("encoder"), list):
        experiment.space["encoder"] = kept
    return dropped


def common_reasons(dropped: dict[str, str]) -> str:
    """The reasons encoders were dropped, the most common first, with how many each: e.g.
    "33 with no answer" (each reason without its parenthesised detail)."""
    counts = Counter(why.split(" (")[0] for why in dropped.values())
    return ", ".join(f"{n} with {why}" if why.startswith("no ") else f"{n}: {why}"
                     for why, n in counts.most_common())


def per_encoder(dropped: dict[str, str]) -> str:
    """Each dropped encoder with its reason, on lines of their own, with --verbose; else the
    hint that --verbose lists them."""
    if not is_verbose():
        return "; --verbose lists each"
    return "".join(f"\n  {name}: {why}" for name, why in dropped.items())


def _resolve_encoders(path: Path, space: dict[str, Any]) -> None:
    """Expand `encoder = "all"` to the map's pretrained encoders and check every named
    encoder exists."""
    encoder_map = space.get("encoder_map")
    known = load_map(encoder_map if isinstance(encoder_map, str) else None)
    if space.get("encoder") in ("all", ["all"]):  # every pretrained encoder: not tiny
        space["encoder"] = [n for n, spec in known.items() if pretrained(spec)]
    for name in _candidates(space.get("encoder", "tiny")):
        if name not in known and not (Path(name).expanduser() / "encoder").is_dir():
            raise _fail(path, f"search.encoder: unknown encoder {name!r} "
                        "(`python -m bertclf encoders` lists the map)")
