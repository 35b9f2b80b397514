"""Promotion: the best configurations of a search re-trained at full fidelity with several
seeds each (the split stays fixed); the one with the best mean validation accuracy wins, so
that one lucky seed cannot pick the model."""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import optuna
from optuna.trial import TrialState

from bertclf.errors import TrainingError, UserError
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
    CLAIM,
    CLAIM_RUN_ID_ATTR,
    CONTROL_TAG,
    ERROR_ATTR,
    FIDELITY,
    MODEL_URI_ATTR,
    MODEL_URI_TAG,
    PARENT_RUN_TAG,
    PROMOTED_TRIAL_TAG,
    PROMOTES,
    PROMOTION_STAGE,
    RUN_KEY,
    SEED,
    STAGE,
    TEST_ACCURACY_ATTR,
    WINNER_ATTR,
    WITHDRAWN,
    fixed_params,
)
from sweep.runner import Budget, load_experiment_data, short
from sweep.study import open_storage
from sweep.tracking import Tracker, dataset_inputs, run_params
from sweep.trial import PRELOAD, TrialJob, run_job

CONTROL = "defaults"  # the control arm's name where a trial's number would be


@dataclass
class Candidate:
    """One searched configuration (or, with no trial, the control: the tool's defaults)
    and its full-fidelity runs by seed."""

    trial: optuna.trial.FrozenTrial | None
    config: TrainConfig
    seeds: int  # trained with seeds config.seed, config.seed + 1, ...
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> metrics, run id, model

    @property
    def label(self) -> str:
        """"trial N", or "defaults" for the control."""
        return f"trial {self.trial.number}" if self.trial else CONTROL

    @property
    def run_name(self) -> str:
        return f"trial-{self.trial.number}" if self.trial else CONTROL

    def summary(self) -> dict:
        """The model card's `promotion` object for this configuration."""
        seeds = sorted(self.runs)
        val = [self.runs[s]["val_accuracy"] for s in seeds]
        test = [self.runs[s]["test_accuracy"] for s in seeds]
        best = max(seeds, key=lambda s: self.runs[s]["val_accuracy"])
        return {"trial": self.trial.number if self.trial else CONTROL, "seeds": seeds,
                "val_accuracy": val,
                "test_accuracy": test, "val_accuracy_mean": statistics.fmean(val),
                "val_accuracy_std": statistics.stdev(val) if len(val) > 1 else 0.0,
                "test_accuracy_mean": statistics.fmean(test),
                "test_accuracy_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                "best_seed": best, "run_id": self.runs[best]["run_id"],
                "model_uri": self.runs[best]["model_uri"],
                "run_ids": [self.runs[s]["run_id"] for s in seeds],
                "model_uris": [self.runs[s]["model_uri"] for s in seeds]}


def margin(winner: dict, control: dict) -> dict:
    """The winner's mean accuracies minus the control's, with the standard error of each
    difference over seeds (0 where a side has one seed)."""
    out = {}
    for key in ("val_accuracy", "test_accuracy"):
        a, b = winner[key], control[key]
        variance = sum(statistics.variance(x) / len(x) for x in (a, b) if len(x) > 1)
        out[key] = statistics.fmean(a) - statistics.fmean(b)
        out[f"{key}_se"] = variance ** 0.5
    return out


def top_trials(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The `top` completed trials by validation accuracy, one per distinct configuration."""
    completed = sorted(study.get_trials(deepcopy=False, states=[
        optuna.trial.TrialState.COMPLETE]), key=lambda t: (-t.value, t.number))
    chosen, seen = [], set()
    for trial in completed:
        key = json.dumps(trial.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
    return chosen[:top]


def trial_config(trial: optuna.trial.FrozenTrial, experiment: Experiment,
                 fidelity: dict) -> TrainConfig:
    """The trial's configuration, with the promotion stage's fidelity."""
    return experiment.base_config(**{**fixed_params(trial), **trial.params, **fidelity})


def claims_study_name(study_name: str) -> str:
    """The companion study whose trials claim promotion runs (a name no user study can
    have: study names may not hold a colon)."""
    return f"{study_name}:promotion"


class Claims:
    """Promotion runs claimed in an Optuna study of their own, so that several promotes
    (threads, commands, hosts) train each (trial, seed) exactly once. A claim is a trial:
    owned, beating and failed when its owner dies like a search trial. Claiming is
    claim-then-check: a claimer who then sees another live or finished claim of the same
    run withdraws (at most one claim of a run survives), and tries again later."""

    def __init__(self, study_name: str, storage: optuna.storages.BaseStorage):
        self.storage = storage
        self.study = optuna.create_study(study_name=claims_study_name(study_name),
                                         storage=storage, direction="maximize",
                                         load_if_exists=True)
        self.study_id = storage.get_study_id_from_name(self.study.study_name)

    def holders(self, key: str, states=(TrialState.RUNNING, TrialState.COMPLETE)) -> list:
        return [t for t in self.study.get_trials(deepcopy=False, states=states)
                if t.user_attrs.get(RUN_KEY) == key]

    def claim(self, key: str, attempts: int = 5) -> tuple[optuna.Trial, int] | None:
        """A claim on run `key` and its trial id, or None if another process has it."""
        for _ in range(attempts):
            if self.holders(key):
                return None
            trial = self.study.ask()
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                           trial.number)
            trial.set_user_attr(RUN_KEY, key)
            claim(self.storage, trial_id)
            if not any(t.number != trial.number for t in self.holders(key)):
                return trial, trial_id
            trial.set_user_attr(WITHDRAWN, True)
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            time.sleep(random.uniform(0.1, 1.0))  # both may have withdrawn: try again apart
        return None

    def done(self) -> dict[str, optuna.trial.FrozenTrial]:
        """Run key -> its COMPLETE claim."""
        return {t.user_attrs[RUN_KEY]: t
                for t in self.study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])}


class Promotion:
    """Re-trains the top configurations of a study, continuing where an earlier call stopped,
    with `workers` runs at a time; several promotes on one study share the work."""

    def __init__(self, experiment: Experiment, study: optuna.Study, tracker: Tracker,
                 storage: optuna.storages.BaseStorage, top: int, seeds: int,
                 in_process: bool = False, workers: int = 1,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 grace_seconds: float = GRACE_SECONDS, storage_url: str = "",
                 control_seeds: int = 0, budget: Budget | None = None):
        self.experiment, self.study, self.tracker = experiment, study, tracker
        self.fidelity = experiment.promotion.fidelity
        self.fidelity_key = json.dumps(self.fidelity, sort_keys=True)
        self.in_process = in_process
        self.workers = 1 if in_process else workers
        self.candidates = [Candidate(t, trial_config(t, experiment, self.fidelity), seeds)
                           for t in top_trials(study, top)]
        if not self.candidates:
            raise UserError(f"study {study.study_name!r} has no completed trial to promote")
        if control_seeds:  # the tool's defaults at the same fidelity, with the first seeds
            seed = self.candidates[0].config.seed
            self.candidates.append(Candidate(None, experiment.defaults_config(
                **{**self.fidelity, "seed": seed}), min(control_seeds, seeds)))
        self.storage, self.storage_url = storage, storage_url
        self.claims = Claims(study.study_name, storage)
        self.heartbeat_seconds, self.grace_seconds = heartbeat_seconds, grace_seconds
        self.budget = budget  # a time budget's: no run is started that would end after it

    def key(self, candidate: Candidate, seed: int) -> str:
        return f"{candidate.label} seed {seed} at {self.fidelity_key}"

    def _reconcile(self) -> None:
        """Fail the claims of dead promotes, and end their runs left RUNNING as FAILED."""
        fail_dead_trials(self.claims.study, self.storage, self.grace_seconds)
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], max_results=10000,
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{self.tracker.parent_run_id}' "
                          f"and tags.`{STAGE}` = '{PROMOTION_STAGE}' "
                          "and attributes.status = 'RUNNING'")
        claims = {t.number: t for t in self.claims.study.get_trials(deepcopy=False)}
        for run in runs:
            claimed = claims.get(int(run.data.tags.get(CLAIM, -1)))
            if claimed is None or claimed.state.is_finished():
                error = claimed.user_attrs.get(ERROR_ATTR) if claimed else None
                self.tracker.end_run(run.info.run_id, "FAIL",
                                     error or "promote died during the run")

    def _finished_runs(self) -> None:
        """Read the runs finished before (by any promote) into the candidates."""
        done = self.claims.done()
        for candidate in self.candidates:
            for i in range(candidate.seeds):
                seed = candidate.config.seed + i
                claimed = done.get(self.key(candidate, seed))
                if claimed:
                    candidate.runs[seed] = {
                        "val_accuracy": claimed.value, **{
                            k: claimed.user_attrs[k]
                            for k in (TEST_ACCURACY_ATTR, CLAIM_RUN_ID_ATTR, MODEL_URI_ATTR)}}

    def run(self) -> dict:
        """Train what is missing, choose the winner, record it; returns its summary."""
        self._reconcile()
        self._finished_runs()
        todo = [run for run in self.runs() if run[1] not in run[0].runs]
        done = sum(c.seeds for c in self.candidates) - len(todo)
        counts = " + ".join(f"{c.label} x {c.seeds}" for c in self.candidates)
        print(f"promote: {counts} seed(s) at {short(self.fidelity) or 'the search fidelity'}; "
              f"{done} run(s) done before, {len(todo)} to go, {self.workers} at a time",
              flush=True)
        if todo:
            self._train_all(todo)
        self._finished_runs()  # what other promotes trained meanwhile
        return self._choose()

    def runs(self) -> list[tuple[Candidate, int]]:
        """Every (candidate, seed) in training order: each configuration's first seed (the
        control's too) before any second one, so that a budget that ends the promotion early
        leaves every configuration with a run."""
        most = max(c.seeds for c in self.candidates)
        return [(c, c.config.seed + i) for i in range(most) for c in self.candidates
                if i < c.seeds]

    def _train_all(self, todo: list[tuple[Candidate, int]]) -> None:
        dataset = load_experiment_data(self.experiment, **{
            k: v for k, v in self.fidelity.items() if k.startswith("max_")})
        inputs = dataset_inputs(dataset)
        queue = list(todo)
        lock = threading.Lock()
        stop = threading.Event()
        processes = WarmProcesses(len(todo), PRELOAD, [{}] * self.workers)
        heartbeat = Heartbeat(lambda: open_storage(self.storage_url), self.heartbeat_seconds)

        def work(slot: int) -> None:
            while not stop.is_set():
                with lock:
                    if queue and self.budget and not self.budget.take():
                        print(f"promote: {len(queue)} run(s) not started: they would end "
                              "after the time budget's promotion stage", flush=True)
                        queue.clear()
                    if not queue:
                        return
                    candidate, seed = queue.pop(0)
                claimed = self.claims.claim(self.key(candidate, seed))
                if claimed is None:
                    print(f"promote: {candidate.label} seed {seed} is another "
                          "promote's", flush=True)
                    continue
                trial, trial_id = claimed
                heartbeat.add(trial_id)
                started = time.monotonic()
                try:
                    self._train(candidate, seed, trial, dataset, inputs,
                                lambda job: processes.call(slot, run_job, job), stop)
                finally:
                    heartbeat.remove(trial_id)
                if self.budget:
                    self.budget.observe(time.monotonic() - started)

        def interrupt() -> None:
            stop.set()
            processes.kill()

        try:
            run_workers(work, self.workers, self.in_process, interrupt)
        finally:
            processes.close()
            heartbeat.close()

    def _train(self, candidate: Candidate, seed: int, trial: optuna.Trial, dataset, inputs,
               call_in_process, stop: threading.Event) -> None:
        """Train one claimed run; its run and claim end as it did, failures recorded."""
        config = replace(candidate.config, seed=seed)
        number = candidate.trial.number if candidate.trial else CONTROL
        label = candidate.label
        tags = {STAGE: PROMOTION_STAGE, PROMOTES: str(number), SEED: str(seed),
                FIDELITY: self.fidelity_key, CLAIM: str(trial.number),
                **({CONTROL_TAG: "true"} if candidate.trial is None else {})}
        print(f"promote: {label} seed {seed} started", flush=True)
        run, state, value, error = None, TrialState.FAIL, None, None
        try:
            run = self.tracker.start_child_run(f"promote-{candidate.run_name}-seed-{seed}",
                                               {**run_params(config), "promotes_trial": number},
                                               tags, inputs)
            trial.set_user_attr(CLAIM_RUN_ID_ATTR, run.run_id)
            job = TrialJob(config=asdict(config), dataset=dataset, run_id=run.run_id,
                           tracking_uri=self.tracker.tracking_uri)
            outcome = run_job(job) if self.in_process else call_in_process(job)
            run.tags[MODEL_URI_TAG] = outcome["model_uri"]
            for key in (TEST_ACCURACY_ATTR, MODEL_URI_ATTR):
                trial.set_user_attr(key, outcome[key])
            state, value = TrialState.COMPLETE, outcome["best_val_accuracy"]
        except BaseException as e:
            error = ("interrupted (Ctrl-C or SIGTERM) during the run"
                     if isinstance(e, KeyboardInterrupt) or stop.is_set()
                     else mask(f"{type(e).__name__}: {e}"))
            trial.set_user_attr(ERROR_ATTR, error[:1000])
            if not isinstance(e, Exception):
                raise
            print(f"promote: {label} seed {seed} FAIL: {error.splitlines()[0][:200]} "
                  "(run `sweep promote` again to retry it)", flush=True)
        finally:
            frozen = retry(lambda: self.claims.study.tell(trial, value, state,
                                                          skip_if_finished=True))
            if frozen.state != state:  # its claim was failed elsewhere meanwhile
                error, value = f"its claim was ended as {frozen.state.name} elsewhere", None
            if run:
                self.tracker.end_run(run.run_id, frozen.state.name, error, run.tags)
        if value is not None:
            candidate.runs[seed] = {"val_accuracy": value,
                                    "test_accuracy": outcome["test_accuracy"],
                                    "run_id": run.run_id, "model_uri": outcome["model_uri"]}
            print(f"promote: {label} seed {seed}: val_accuracy={value:.4f} "
                  f"test_accuracy={outcome['test_accuracy']:.4f} "
                  f"({outcome['train_seconds']:.0f}s training)", flush=True)

    def _choose(self) -> dict:
        summaries = [(c.label, c.summary()) for c in self.candidates if c.runs]
        ranked = [s for _, s in sorted(summaries, key=lambda ls: -ls[1]["val_accuracy_mean"])]
        if not ranked:
            raise TrainingError("no promotion run finished; run `sweep promote` again")
        for label, s in sorted(summaries, key=lambda ls: -ls[1]["val_accuracy_mean"]):
            print(f"promote: {label}: val_accuracy {s['val_accuracy_mean']:.4f} "
                  f"± {s['val_accuracy_std']:.4f}, test_accuracy {s['test_accuracy_mean']:.4f}"
                  f" ± {s['test_accuracy_std']:.4f} (mean ± standard deviation) over seeds "
                  f"{s['seeds']}", flush=True)
        winner = {**ranked[0], "fidelity": self.fidelity,
                  "candidates": [{k: s[k] for k in ("trial", "val_accuracy_mean",
                                                    "val_accuracy_std", "test_accuracy_mean")}
                                 for s in ranked]}
        control = next((s for s in ranked if s["trial"] == CONTROL), None)
        if control:
            winner["control"] = {k: control[k] for k in (
                "seeds", "val_accuracy", "test_accuracy", "val_accuracy_mean",
                "test_accuracy_mean", "run_id")}
            winner["margin"] = margin(ranked[0], control)
            m = winner["margin"]
            print(f"promote: over the defaults (control, seeds {control['seeds']}): val_accuracy "
                  f"{m['val_accuracy']:+.4f} ± {m['val_accuracy_se']:.4f}, test_accuracy "
                  f"{m['test_accuracy']:+.4f} ± {m['test_accuracy_se']:.4f} (± standard error)"
                  + (": the defaults won" if ranked[0] is control else ""), flush=True)
        self.study.set_user_attr(WINNER_ATTR, winner)
        client, parent = self.tracker.client, self.tracker.parent_run_id
        client.set_tag(parent, PROMOTED_TRIAL_TAG, str(winner["trial"]))
        for key in ("val_accuracy_mean", "val_accuracy_std", "test_accuracy_mean"):
            client.log_metric(parent, f"promoted_{key}", winner[key])
        label = CONTROL if winner["trial"] == CONTROL else f"trial {winner['trial']}"
        print(f"promote: winner {label} (best mean validation accuracy); "
              f"its seed-{winner['best_seed']} model is the one `best --export` writes",
              flush=True)
        return winner
