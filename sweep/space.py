"""Turn an Optuna trial's suggestions over an experiment's search space into a TrainConfig."""

from __future__ import annotations

import optuna

from bertclf.config import TrainConfig, field_types
from sweep.experiment import Experiment, Range


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
            trial.set_user_attr(f"fixed.{name}", dimension)
    config = experiment.base_config(**values)
    trial.set_user_attr("split_seed", config.data_seed)
    return config
