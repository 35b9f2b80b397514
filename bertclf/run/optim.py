"""AdamW with a learning-rate schedule and a weight-decay schedule that follows the step count.

Keras' AdamW casts `weight_decay` to a constant when the train step is traced, so a
schedule never reaches the update; `ScheduledAdamW` reads its decay schedule at
`self.iterations` inside the update instead. The schedule gives the fraction of each
decayed weight removed at a step (README, "Weight decay"): `weight_decay` times the
learning rate at that step ("lr", as in BERT's and Keras' AdamW), times the peak learning
rate ("constant"), or times the peak and then a tenth and a hundredth of it ("piecewise").
"""

from __future__ import annotations

import tensorflow as tf

from bertclf.run.config import LR_SCHEDULES, WD_SCHEDULES

# The notebook's piecewise-constant decay: full, then a tenth, then a hundredth.
PIECEWISE_FRACTIONS = (0.5, 0.75)
PIECEWISE_FACTORS = (1.0, 0.1, 0.01)

# BERT's recipe: no decay on biases and layer-norm parameters.
NO_DECAY_NAMES = ("bias", "LayerNorm", "layer_norm", "layernorm")


@tf.keras.utils.register_keras_serializable(package="bertclf")
class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay to 0 at the end."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        rising = self.peak * step / warmup
        falling = self.peak * tf.maximum(0.0, 1.0 - (step - self.warmup_steps) / decay_span)
        return tf.where(step < self.warmup_steps, rising, falling)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@tf.keras.utils.register_keras_serializable(package="bertclf")
class ScaledSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """`factor` times another schedule (weight decay that follows the learning rate)."""

    def __init__(self, factor: float, schedule: tf.keras.optimizers.schedules.LearningRateSchedule):
        self.factor = float(factor)
        self.schedule = schedule

    def __call__(self, step):
        return self.factor * self.schedule(step)

    def get_config(self) -> dict:
        return {"factor": self.factor,
                "schedule": tf.keras.optimizers.schedules.serialize(self.schedule)}

    @classmethod
    def from_config(cls, config: dict) -> ScaledSchedule:
        config = dict(config)
        config["schedule"] = tf.keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def learning_rate_schedule(lr: float, kind: str, total_steps: int, warmup_fraction: float):
    """The learning rate: a float for 'constant', a WarmupLinearDecay for 'linear'."""
    if kind == "constant":
        return float(lr)
    if kind == "linear":
        return WarmupLinearDecay(lr, int(warmup_fraction * total_steps), total_steps)
    raise ValueError(f"unknown lr schedule {kind!r}: choose one of {', '.join(LR_SCHEDULES)}")


def weight_decay_schedule(weight_decay: float, kind: str, total_steps: int, learning_rate,
                          peak_lr: float):
    """The fraction of each decayed weight removed at a step, as a schedule of the step."""
    if kind == "lr" and isinstance(learning_rate,
                                   tf.keras.optimizers.schedules.LearningRateSchedule):
        return ScaledSchedule(weight_decay, learning_rate)
    if kind in ("lr", "constant"):  # "lr" with a constant learning rate is constant too
        return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
            [0], [weight_decay * peak_lr] * 2)
    if kind == "piecewise":
        boundaries = [max(int(f * total_steps), 1) for f in PIECEWISE_FRACTIONS]
        values = [weight_decay * peak_lr * f for f in PIECEWISE_FACTORS]
        return tf.keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise ValueError(f"unknown weight-decay schedule {kind!r}: choose one of "
                     f"{', '.join(WD_SCHEDULES)}")


@tf.keras.utils.register_keras_serializable(package="bertclf")
class ScheduledAdamW(tf.keras.optimizers.AdamW):
    """AdamW whose decoupled weight decay follows a schedule of the optimizer's own step."""

    def __init__(self, weight_decay_schedule, **kwargs):
        if isinstance(weight_decay_schedule, dict):
            weight_decay_schedule = tf.keras.optimizers.schedules.deserialize(weight_decay_schedule)
        # Keras only runs _apply_weight_decay when weight_decay is set; its value is unused.
        kwargs["weight_decay"] = 1.0
        super().__init__(**kwargs)
        self.weight_decay_schedule = weight_decay_schedule

    def current_weight_decay(self):
        """The fraction of each decayed weight removed at the current step."""
        return tf.cast(self.weight_decay_schedule(self.iterations), tf.float32)

    def _apply_weight_decay(self, variables):
        decay = self.current_weight_decay()
        for variable in variables:
            if self._use_weight_decay(variable):
                variable.assign_sub(variable * tf.cast(decay, variable.dtype))

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("weight_decay", None)
        config["weight_decay_schedule"] = tf.keras.optimizers.schedules.serialize(
            self.weight_decay_schedule)
        return config


def make_optimizer(*, lr: float, lr_schedule: str, warmup_fraction: float, weight_decay: float,
                   wd_schedule: str, total_steps: int) -> ScheduledAdamW:
    """AdamW as in the BERT recipe, with the given learning-rate and weight-decay schedules."""
    lr_value = learning_rate_schedule(lr, lr_schedule, total_steps, warmup_fraction)
    wd_value = weight_decay_schedule(weight_decay, wd_schedule, total_steps, lr_value, lr)
    optimizer = ScheduledAdamW(wd_value, learning_rate=lr_value, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer
