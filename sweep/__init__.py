"""Optuna search over bertclf fine-tuning runs, every trial tracked in MLflow."""

import os

import bertclf  # noqa: F401  (tf-keras and the quiet defaults, before TensorFlow or MLflow loads)

# MLflow prints a run's link as it ends, password and all, with a tracking server.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
