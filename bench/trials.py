"""Sweep trials for rows 3, 5 and 6: their config, the stores they report to, and timings
of the processes that run them."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict
from pathlib import Path

import optuna

from bench import children
from bench.context import Context
from bertclf.data.datasets import Dataset
from bertclf.data.tokens import token_ids
from bertclf.encoders.map import EncoderSpec
from bertclf.run.config import TrainConfig
from sweep.trial import TrialAddress, TrialJob


def trial_config(ctx: Context, epochs: int) -> dict:
    """A tiny-encoder trial at sequence length 128 that runs all its epochs (patience =
    epochs, so early stopping never ends it sooner than the bare baseline)."""
    config = TrainConfig(data=str(ctx.data_path), encoder="tiny", seq_len=128,
                         batch_size=ctx.plan.batch_size, epochs=epochs, patience=epochs,
                         lr=1e-3, seed=42)
    return asdict(config)


def warm_token_cache(spec: EncoderSpec, dataset: Dataset, seq_len: int) -> None:
    """Tokenize every split now, so trial processes read the ids from the cache."""
    for name in ("train", "validation", "test"):
        token_ids(spec, getattr(dataset, name), seq_len)


class Stores:
    """A real MLflow SQLite store and Optuna SQLite study in a folder, as a sweep uses."""

    def __init__(self, root: Path):
        from mlflow.tracking import MlflowClient

        from sweep.study import open_storage

        root.mkdir(parents=True)
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.storage_url = f"sqlite:///{root / 'optuna.db'}"
        self.study = optuna.create_study(study_name="bench", direction="maximize",
                                         storage=open_storage(self.storage_url),
                                         pruner=optuna.pruners.NopPruner())
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self.client.create_experiment(
            "bench", artifact_location=(root / "artifacts").as_uri())
        self.trials: dict[str, optuna.Trial] = {}

    def job(self, config: dict, dataset: Dataset) -> TrialJob:
        """Ask the study for a trial, open its MLflow run, and package both as a TrialJob."""
        trial = self.study.ask()
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}")
        self.trials[run.info.run_id] = trial
        address = TrialAddress(self.storage_url, self.study.study_name, trial.number)
        return TrialJob(config=config, dataset=dataset, run_id=run.info.run_id,
                        tracking_uri=self.tracking_uri, trial=address)

    def finish(self, job: TrialJob, outcome: dict | None = None) -> None:
        """Complete the trial (with its validation accuracy if known) and end its run."""
        value = (outcome or {}).get("best_val_accuracy", 0.0)
        self.study.tell(self.trials.pop(job.run_id), value)
        self.client.set_terminated(job.run_id)


PHASES = {("spawned", "entered"): "python start",
          ("entered", "train_called"): "imports + stores",
          ("entered", "fit_started"): "imports + cached ids + model build",
          ("train_called", "fit_started"): "cached ids + model build",
          ("fit_started", "first_step"): "first step incl. tracing",
          ("first_step", "fit_ended"): "rest of fit",
          ("fit_ended", "done"): "after fit (evaluate; a trial also logs and exports)",
          ("done", "exited"): "process exit"}


def phases(stamps: dict[str, float]) -> str:
    """A process's timestamps (children.timed_trial, children.bare_fit) as durations."""
    order = sorted(stamps, key=stamps.__getitem__)
    return ", ".join(f"{PHASES.get((a, b), f'{a} -> {b}')} {stamps[b] - stamps[a]:.1f}s"
                     for a, b in itertools.pairwise(order))


def timed_run_in_child(job: TrialJob) -> tuple[dict, float]:
    """children.run_in_child and its wall time (spawn to the process's end)."""
    started = time.perf_counter()
    outcome = children.run_in_child(job)
    return outcome, time.perf_counter() - started

