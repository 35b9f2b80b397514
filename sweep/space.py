"""Turn an Optuna trial's suggestions over an experiment's search space into a TrainConfig."""

from __future__ import annotations

import optuna

from bertclf.run.config import TrainConfig, field_types
from sweep.experiment import Experiment, Range
from sweep.records import DEFAULTS_ATTR, SPLIT_SEED_ATTR, fixed_attr


def suggest_config(trial: optuna.Trial, experiment: Experiment) -> TrainConfig:
    """Sample every searched dimension; fixed values are recorded as trial attributes."""
    values = {}
    for name, dimension in experiment.space.items():
        if isinstance(dimension, Range) and field_types()[name] is int:
            values[name] = trial.suggest_int(name, dimension.low, dimension.high,
                                             step=int(dimension.step or 1), log=dimension.log)
        elif isinstance(dimension, Range):
            values[name] = trial.suggest_float(name, float(dimension.low), float(dimension.high),
                                               step=dimension.step, log=dimension.log)
        elif isinstance(dimension, list):
            values[name] = trial.suggest_categorical(name, dimension)
        else:
            values[name] = dimension
            trial.set_user_attr(fixed_attr(name), dimension)
    config = experiment.base_config(**values)
    trial.set_user_attr(SPLIT_SEED_ATTR, config.data_seed)
    return config


def default_params(experiment: Experiment) -> dict:
    """The tool's defaults (TrainConfig's) for every searched dimension whose range or
    choices hold them: the first trial of a new study, so that every study shows what the
    search found over not searching. Dimensions that cannot take the default are sampled."""
    params = {}
    for name, dimension in experiment.space.items():
        default = getattr(TrainConfig, name, None)
        if isinstance(dimension, Range):
            inside = default is not None and dimension.low <= default <= dimension.high
            if inside and (dimension.step is None or
                           (default - dimension.low) % dimension.step == 0):
                params[name] = default
        elif isinstance(dimension, list) and default in dimension:
            params[name] = default
    return params


def enqueue_defaults(study: optuna.Study, experiment: Experiment) -> None:
    """Queue the defaults as the study's next trial (called once, by the study's creator)."""
    study.enqueue_trial(default_params(experiment), user_attrs={DEFAULTS_ATTR: True})
