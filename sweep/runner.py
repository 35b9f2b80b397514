"""The sweep loop: Optuna proposes, a trial process fine-tunes, MLflow records."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

import optuna
from optuna.trial import TrialState

from bertclf.data.datasets import Dataset
from bertclf.masking import mask
from bertclf.run.config import TrainConfig
from sweep.experiment import Experiment
from sweep.ownership import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    Heartbeat,
    claim,
    fail_dead_trials,
    retry,
)
from sweep.processes import WarmProcesses, run_workers
from sweep.records import (
    ERROR_ATTR,
    MODEL_URI_ATTR,
    RETRY_OF,
    RUN_ID_ATTR,
    SUMMARY_ATTRS,
    TEST_ACCURACY_ATTR,
)
from sweep.space import suggest_config
from sweep.study import ask, open_storage
from sweep.tracking import ChildRun, Tracker, dataset_inputs
from sweep.trial import PRELOAD, PrunedAt, TrialAddress, TrialJob, run_job


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


def requeue_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage,
                        grace_seconds: float) -> None:
    """Fail the trials of dead workers (saying why) and queue their parameters again, so
    the next trial a worker asks for re-runs them."""
    for trial in fail_dead_trials(study, storage, grace_seconds):
        print(f"trial {trial.number} FAIL: {trial.user_attrs.get('error')}; its parameters "
              "are queued again", flush=True)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})


class Budget:
    """At most `trials` trials (None: no count), handed out to worker threads one at a time,
    none started once `stop` is set or when it would end after the deadline: a trial is
    taken to last `trial_seconds` (0: any time before the deadline will do), and with an
    estimate, as long as the longest trial of this run once one has finished."""

    def __init__(self, trials: int | None, timeout_seconds: float | None,
                 trial_seconds: float = 0.0):
        self.left = trials
        self.deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
        self.trial_seconds = trial_seconds
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._longest = 0.0

    def take(self) -> bool:
        with self._lock:
            if (self.left is not None and self.left < 1) or self.stop.is_set() or (
                    self.deadline is not None
                    and time.monotonic() + self.trial_seconds >= self.deadline):
                return False
            if self.left is not None:
                self.left -= 1
            return True

    def observe(self, seconds: float) -> None:
        """A trial of this run took `seconds`."""
        with self._lock:
            self._longest = max(self._longest, seconds)
            if self.trial_seconds:
                self.trial_seconds = self._longest


class Sweep:
    """Runs trials of one experiment on one study, each tracked as an MLflow child run: its
    own ask-and-tell loop, so that ownership, heartbeats and interrupts are the sweep's."""

    def __init__(self, experiment: Experiment, dataset: Dataset, study: optuna.Study,
                 tracker: Tracker, storage: optuna.storages.BaseStorage, storage_url: str,
                 in_process: bool = False, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 grace_seconds: float = GRACE_SECONDS):
        self.experiment = experiment
        self.dataset = dataset
        self.data_inputs = dataset_inputs(dataset)
        self.study = study
        self.tracker = tracker
        self.storage = storage
        self.storage_url = storage_url
        self.in_process = in_process
        self.heartbeat_seconds = heartbeat_seconds
        self.grace_seconds = grace_seconds
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.max_steps = experiment.max_steps(len(dataset.train))
        self.processes: WarmProcesses | None = None
        self.heartbeat: Heartbeat | None = None
        self.budget = Budget(0, None)
        self.progress_note: Callable[[], str] | None = None  # appended to each trial's line

    def fail_dead_trials(self) -> None:
        requeue_dead_trials(self.study, self.storage, self.grace_seconds)

    def trial(self, slot: int) -> optuna.trial.FrozenTrial:
        """Ask for a trial, run it and tell its result; the MLflow run ends as the study
        says the trial ended, with the reason where it failed, whatever stage it failed at."""
        trial = ask(self.study, self.storage_url)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                       trial.number)
        run: ChildRun | None = None
        outcome: dict = {}
        state, value, interrupted, lost = TrialState.FAIL, None, None, False
        try:
            claim(self.storage, trial_id)
            self.heartbeat.add(trial_id)
            config = suggest_config(trial, self.experiment)
            print(f"trial {trial.number} started: {short(trial.params)}", flush=True)
            run = self.tracker.start_trial_run(trial, config, self.data_inputs)
            outcome = self.train(trial, config, run, slot)
            for key in SUMMARY_ATTRS:
                trial.set_user_attr(key, outcome[key])
            state, value = TrialState.COMPLETE, outcome["best_val_accuracy"]
        except optuna.TrialPruned as e:
            state = TrialState.PRUNED
            if run and isinstance(e, PrunedAt):
                run.tags.update(pruned_at_step=str(e.step), pruned_at_epoch=f"{e.epoch:g}")
        except BaseException as e:
            lost = isinstance(e, optuna.exceptions.UpdateFinishedTrialError)
            if isinstance(e, KeyboardInterrupt) or self.budget.stop.is_set():
                interrupted = e
                error = "interrupted (Ctrl-C or SIGTERM) during the trial"
            else:
                error = mask(f"{type(e).__name__}: {e}")
            self._record_error(trial, run, error)
        finally:
            self.heartbeat.remove(trial_id)
        frozen = retry(lambda: self.study.tell(trial, value, state, skip_if_finished=True))
        if frozen.state != state or lost:  # ended elsewhere (its owner was taken for dead)
            self._record_error(trial, run, f"the trial was ended as {frozen.state.name} "
                               f"elsewhere: {frozen.user_attrs.get(ERROR_ATTR, '')}")
        if run and "model_uri" in outcome and frozen.state != TrialState.COMPLETE:
            self.tracker.drop_model(run.run_id, outcome["model_uri"])
        if run:
            self.tracker.end_run(run.run_id, frozen.state.name, run.error, run.tags)
        if isinstance(interrupted, KeyboardInterrupt):
            raise interrupted
        return frozen

    @staticmethod
    def _record_error(trial: optuna.Trial, run: ChildRun | None, error: str) -> None:
        if run:
            run.error = error
        try:
            trial.set_user_attr(ERROR_ATTR, error[:1000])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def train(self, trial: optuna.Trial, config: TrainConfig, run: ChildRun, slot: int) -> dict:
        """Train `config` in a trial process of `slot` (or here, in-process), reporting every
        evaluation to the trial, which may prune (PrunedAt)."""
        address = TrialAddress(self.storage_url, self.study.study_name, trial.number,
                               self.experiment.pruner, self.max_steps)
        job = TrialJob(config=asdict(config), dataset=self.dataset, run_id=run.run_id,
                       tracking_uri=self.tracker.tracking_uri, trial=address)
        return run_job(job) if self.in_process else self.processes.call(slot, run_job, job)

    def after_trial(self, trial: optuna.trial.FrozenTrial) -> None:
        """A progress line per finished trial, the best so far on the parent run, and the
        models outside the best `keep_models` dropped."""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        self.budget.observe(seconds)
        line = f"trial {trial.number} {trial.state.name} in {seconds:.1f}s"
        if trial.state == TrialState.COMPLETE:
            line += (f": val_accuracy={trial.value:.4f} "
                     f"test_accuracy={trial.user_attrs[TEST_ACCURACY_ATTR]:.4f}")
        elif trial.state == TrialState.PRUNED and trial.last_step is not None:
            step = trial.last_step
            line += f" after step {step}: val_accuracy={trial.intermediate_values[step]:.4f}"
        elif ERROR_ATTR in trial.user_attrs:
            line += f": {trial.user_attrs[ERROR_ATTR].splitlines()[0][:200]}"
        try:
            best = self.study.best_trial
            line += f" | best: trial {best.number} val_accuracy={best.value:.4f}"
        except ValueError:
            pass
        if self.progress_note:
            line += f" {self.progress_note()}"
        print(line, flush=True)
        self.tracker.log_best(step=trial.number)
        if self.experiment.keep_models:
            self.drop_models(self.experiment.keep_models)

    def drop_models(self, keep: int) -> None:
        """Delete the logged models of completed trials outside the best `keep` by
        validation accuracy (their runs, metrics and curves stay), except models that are
        registered or chosen by a promotion. Safe to repeat and to run from many workers."""
        completed = sorted(self.study.get_trials(deepcopy=False, states=[
            TrialState.COMPLETE]), key=lambda t: (-t.value, t.number))
        for trial in completed[keep:]:
            if MODEL_URI_ATTR not in trial.user_attrs or trial.number in self._decided:
                continue
            if self.tracker.drop_model(trial.user_attrs[RUN_ID_ATTR],
                                       trial.user_attrs[MODEL_URI_ATTR]):
                print(f"sweep: dropped the logged model of trial {trial.number} (keep_models "
                      f"= {keep})", flush=True)
            self._decided.add(trial.number)

    def _work(self, slot: int) -> None:
        while self.budget.take():
            try:
                self.fail_dead_trials()
                trial = self.trial(slot)
            except Exception as e:  # the store itself failed: this worker cannot go on
                print(f"sweep: worker {slot} stopped: {mask(f'{type(e).__name__}: {e}')}",
                      file=sys.stderr, flush=True)
                return
            try:
                self.after_trial(trial)
            except Exception as e:  # the trial is recorded; its aftermath may wait
                print(f"sweep: after trial {trial.number}: "
                      f"{mask(f'{type(e).__name__}: {e}')}", file=sys.stderr, flush=True)

    def run(self, trials: int | None, timeout_seconds: float | None = None,
            slots: list[dict[str, str]] | None = None, trial_seconds: float = 0.0) -> None:
        """Run exactly `trials` more trials (fewer if the time runs out; None: as many as
        the time allows), one at a time per worker slot (each slot's trial processes get its
        environment, e.g. its GPU); with `trial_seconds`, none is started that would end
        after the timeout (Budget). Ctrl-C (KeyboardInterrupt) ends every running trial as
        failed, then raises."""
        started = time.perf_counter()
        slots = slots or [{}]
        self.budget = Budget(trials, timeout_seconds, trial_seconds)
        self._decided: set[int] = set()  # trials whose model was dropped, or must stay
        self.heartbeat = Heartbeat(lambda: open_storage(self.storage_url),
                                   self.heartbeat_seconds)
        self.processes = WarmProcesses(sys.maxsize if trials is None else trials, PRELOAD,
                                       slots)

        def interrupt() -> None:
            self.budget.stop.set()
            self.processes.kill()  # each worker's trial then ends as failed

        try:
            run_workers(self._work, len(slots), self.in_process, interrupt)
        finally:
            self.processes.close()
            self.heartbeat.close()
        print(f"sweep: {'as many trials as fit' if trials is None else trials} "
              f"{'' if trials is None else 'trial(s) '}requested, done in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
