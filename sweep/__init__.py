"""Optuna search over bertclf fine-tuning runs, every trial tracked in MLflow."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
