"""The sweep loop: Optuna proposes, a trial process fine-tunes, MLflow records."""

from __future__ import annotations

import time
from dataclasses import asdict

import optuna

from bertclf.config import TrainConfig
from bertclf.datasets import Dataset
from sweep.experiment import Experiment
from sweep.processes import WarmProcessPool
from sweep.space import suggest_config
from sweep.tracking import ChildRun, Tracker, dataset_inputs
from sweep.trial import PRELOAD, TrialJob, run_job

SUMMARY_ATTRS = ("test_accuracy", "test_loss", "best_epoch", "model_uri")
DROPPED_ATTR = "dropped_models"  # study attribute: trials whose logged model was deleted


def short(values: dict) -> str:
    """key=value pairs on one line, floats to 3 significant digits."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def load_experiment_data(experiment: Experiment, **fidelity) -> Dataset:
    """Load and split the experiment's data once, with the study's split seed; every trial
    trains on this split. `fidelity` overrides the data caps (the promotion stage's)."""
    config = experiment.base_config(**fidelity)
    print(f"sweep: loading data from {config.data} (split seed {config.data_seed})", flush=True)
    dataset = config.load_data()
    sizes = {n: len(getattr(dataset, n)) for n in ("train", "validation", "test")}
    print(f"sweep: data {short(sizes)} classes={dataset.class_names}", flush=True)
    return dataset


class Sweep:
    """Runs trials of one experiment on one study, each tracked as an MLflow child run."""

    def __init__(self, experiment: Experiment, dataset: Dataset, study: optuna.Study,
                 tracker: Tracker, storage_url: str, in_process: bool = False):
        self.experiment = experiment
        self.dataset = dataset
        self.data_inputs = dataset_inputs(dataset)
        self.study = study
        self.tracker = tracker
        self.storage_url = storage_url
        self.in_process = in_process
        self.processes: WarmProcessPool | None = None

    def objective(self, trial: optuna.Trial) -> float:
        """Suggest a configuration, train it (pruned after any epoch), return its score."""
        config = suggest_config(trial, self.experiment)
        print(f"trial {trial.number} started: {short(trial.params)}", flush=True)
        with self.tracker.trial_run(trial, config, self.data_inputs) as run:
            outcome = self.train(trial, config, run)
        for key in SUMMARY_ATTRS:
            trial.set_user_attr(key, outcome[key])
        return outcome["best_val_accuracy"]

    def train(self, trial: optuna.Trial, config: TrainConfig, run: ChildRun) -> dict:
        """Train `config` in a trial process (or here, in-process), reporting every epoch to
        `trial`; raises optuna.TrialPruned, with the epoch on `run`, if the pruner stops it."""
        job = TrialJob(config=asdict(config), dataset=self.dataset, run_id=run.run_id,
                       tracking_uri=self.tracker.tracking_uri, storage_url=self.storage_url,
                       study_name=self.study.study_name, trial_id=trial._trial_id,
                       pruner=self.experiment.pruner, max_epochs=self.experiment.max_epochs)
        outcome = run_job(job, trial) if self.in_process else self.processes.call(run_job, job)
        if "pruned_at_epoch" in outcome:
            epoch = outcome["pruned_at_epoch"]
            run.tags["pruned_at_epoch"] = str(epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        return outcome

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A progress line per finished trial, the best so far on the parent run, and the
        models outside the best `keep_models` dropped."""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        line = f"trial {trial.number} {trial.state.name} in {seconds:.1f}s"
        if trial.state.name == "COMPLETE":
            line += (f": val_accuracy={trial.value:.4f} "
                     f"test_accuracy={trial.user_attrs['test_accuracy']:.4f}")
        elif trial.state.name == "PRUNED":
            epoch = trial.last_step
            line += f" after epoch {epoch}: val_accuracy={trial.intermediate_values[epoch]:.4f}"
        elif "error" in trial.user_attrs:
            line += f": {trial.user_attrs['error'].splitlines()[0][:200]}"
        try:
            best = study.best_trial
            line += f" | best: trial {best.number} val_accuracy={best.value:.4f}"
        except ValueError:
            pass
        print(line, flush=True)
        self.tracker.log_best(step=trial.number)
        if self.experiment.keep_models:
            self.drop_models(self.experiment.keep_models)

    def drop_models(self, keep: int) -> None:
        """Delete the logged models of completed trials outside the best `keep` by
        validation accuracy (their runs, metrics and curves stay)."""
        completed = sorted(self.study.get_trials(deepcopy=False, states=[
            optuna.trial.TrialState.COMPLETE]), key=lambda t: (-t.value, t.number))
        dropped = set(self.study.user_attrs.get(DROPPED_ATTR, []))
        for trial in completed[keep:]:
            if trial.number in dropped or "model_uri" not in trial.user_attrs:
                continue
            self.tracker.drop_model(trial.user_attrs["mlflow_run_id"],
                                    trial.user_attrs["model_uri"])
            dropped.add(trial.number)
            self.study.set_user_attr(DROPPED_ATTR, sorted(dropped))
            print(f"sweep: dropped the logged model of trial {trial.number} (keep_models = "
                  f"{keep})", flush=True)

    def run(self, trials: int, timeout_seconds: float | None = None, workers: int = 1) -> None:
        """Run exactly `trials` more trials (fewer if the time budget runs out), `workers`
        trial processes at a time."""
        started = time.perf_counter()
        self.processes = WarmProcessPool(trials, PRELOAD)
        try:
            self.study.optimize(self.objective, n_trials=trials, timeout=timeout_seconds,
                                n_jobs=workers, catch=(Exception,),
                                callbacks=[self.after_trial], gc_after_trial=False)
        finally:
            self.processes.close()
        print(f"sweep: {trials} trial(s) requested, done in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
