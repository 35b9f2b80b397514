"""The sweep loop: Optuna proposes, a trial process fine-tunes, MLflow records."""

from __future__ import annotations

import time
from dataclasses import asdict

import optuna

from bertclf.data import Dataset
from bertclf.encoders import get_encoder
from sweep.experiment import Experiment
from sweep.space import suggest_config
from sweep.tracking import Tracker
from sweep.trial import TrialJob, TrialProcesses, run_job


def _short(values: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def load_experiment_data(experiment: Experiment) -> Dataset:
    """Load and split the experiment's data once; every trial trains on this split."""
    base = experiment.base_config()
    print(f"sweep: loading data from {base.data}", flush=True)
    dataset = base.load_data()
    sizes = {n: len(getattr(dataset, n)) for n in ("train", "validation", "test")}
    print(f"sweep: data {_short(sizes)} classes={dataset.class_names}", flush=True)
    return dataset


class Sweep:
    """Runs trials of one experiment on one study, each tracked as an MLflow child run."""

    def __init__(self, experiment: Experiment, dataset: Dataset, study: optuna.Study,
                 tracker: Tracker, storage_url: str, in_process: bool = False):
        self.experiment = experiment
        self.dataset = dataset
        self.study = study
        self.tracker = tracker
        self.storage_url = storage_url
        self.in_process = in_process
        self.processes = TrialProcesses()

    def objective(self, trial: optuna.Trial) -> float:
        config = suggest_config(trial, self.experiment)
        spec = get_encoder(config.encoder, config.encoder_map)
        handles = {"encoder_handle": spec.encoder, "preprocess_handle": spec.preprocess}
        run_id = self.tracker.start_trial(trial, config, handles)
        print(f"trial {trial.number} started: {_short(trial.params)}", flush=True)
        job = TrialJob(config=asdict(config), dataset=self.dataset, run_id=run_id,
                       tracking_uri=self.tracker.tracking_uri, storage_url=self.storage_url,
                       study_name=self.study.study_name, trial_id=trial._trial_id)
        try:
            outcome = run_job(job, trial) if self.in_process else self.processes.run(job)
        except optuna.TrialPruned as e:
            self.tracker.end_trial(run_id, "PRUNED", error=str(e))
            raise
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", error[:1000])
            self.tracker.end_trial(run_id, "FAIL", error=error)
            raise
        for key in ("test_accuracy", "test_loss", "best_epoch", "model_uri"):
            trial.set_user_attr(key, outcome[key])
        self.tracker.end_trial(run_id, "COMPLETE")
        return outcome["best_val_accuracy"]

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A progress line per finished trial and the best so far on the parent run."""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        line = f"trial {trial.number} {trial.state.name} in {seconds:.1f}s"
        if trial.value is not None:
            line += (f": val_accuracy={trial.value:.4f} "
                     f"test_accuracy={trial.user_attrs.get('test_accuracy', float('nan')):.4f}")
        elif "error" in trial.user_attrs:
            line += f": {trial.user_attrs['error'].splitlines()[0][:200]}"
        try:
            best = study.best_trial
            line += f" | best: trial {best.number} val_accuracy={best.value:.4f}"
        except ValueError:
            pass
        print(line, flush=True)
        self.tracker.log_best(step=trial.number)

    def run(self, trials: int, timeout_seconds: float | None = None, workers: int = 1) -> None:
        """Run exactly `trials` more trials (fewer if the time budget runs out), `workers`
        trial processes at a time."""
        started = time.perf_counter()
        try:
            self.study.optimize(self.objective, n_trials=trials, timeout=timeout_seconds,
                                n_jobs=workers, catch=(Exception,),
                                callbacks=[self.after_trial], gc_after_trial=False)
        finally:
            self.processes.close()
        print(f"sweep: {trials} trial(s) requested, done in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
