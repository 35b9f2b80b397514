"""Optuna search over bertclf fine-tuning runs, every trial tracked in MLflow."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Progress is printed by the sweep itself: a line per trial, Keras' line per epoch.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow prints a run's link as it ends, password and all, with a tracking server.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
