"""Turn an Optuna trial's suggestions over an experiment's search space into a TrainConfig."""

from __future__ import annotations

from dataclasses import fields

import optuna

from bertclf.config import TrainConfig
from sweep.experiment import Experiment, Range

# Whether each TrainConfig field is an integer (a range over it is sampled as ints).
INT_FIELDS = {f.name: str(f.type).split("|")[0].strip() == "int" for f in fields(TrainConfig)}


def suggest_config(trial: optuna.Trial, experiment: Experiment) -> TrainConfig:
    """Sample every searched dimension; fixed values are recorded as trial attributes."""
    values = {}
    for name, dimension in experiment.space.items():
        if isinstance(dimension, Range):
            if INT_FIELDS.get(name, False):
                values[name] = trial.suggest_int(name, dimension.low, dimension.high,
                                                 step=int(dimension.step or 1),
                                                 log=dimension.log)
            else:
                values[name] = trial.suggest_float(name, float(dimension.low),
                                                   float(dimension.high), step=dimension.step,
                                                   log=dimension.log)
        elif isinstance(dimension, list):
            values[name] = trial.suggest_categorical(name, dimension)
        else:
            values[name] = dimension
            trial.set_user_attr(f"fixed.{name}", dimension)
    return experiment.base_config(**values)
