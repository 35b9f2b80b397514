"""Optuna search over bertclf fine-tuning runs, every trial tracked in MLflow."""

import bertclf  # noqa: F401  (tf-keras and the quiet defaults, before TensorFlow or MLflow loads)
