"""Promotion: the best configurations of a search re-trained at full fidelity with several
seeds each (the split stays fixed); the one with the best mean validation accuracy wins, so
that one lucky seed cannot pick the model."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace

import optuna

from bertclf.config import TrainConfig
from bertclf.errors import TrainingError, UserError
from sweep.experiment import Experiment
from sweep.processes import WarmProcessPool
from sweep.runner import load_experiment_data, short
from sweep.tracking import Tracker, dataset_inputs, run_params
from sweep.trial import PRELOAD, TrialJob, run_job

WINNER_ATTR = "promotion"  # study attribute: the promoted winner, as `best` shows it
STAGE, PROMOTES, SEED, FIDELITY = "sweep.stage", "sweep.promotes_trial", "sweep.seed", \
    "sweep.fidelity"


@dataclass
class Candidate:
    """One searched configuration and its full-fidelity runs by seed."""

    trial: optuna.trial.FrozenTrial
    config: TrainConfig
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> metrics, run id, model

    def summary(self) -> dict:
        """The model card's `promotion` object for this configuration."""
        seeds = sorted(self.runs)
        val = [self.runs[s]["val_accuracy"] for s in seeds]
        test = [self.runs[s]["test_accuracy"] for s in seeds]
        best = max(seeds, key=lambda s: self.runs[s]["val_accuracy"])
        return {"trial": self.trial.number, "seeds": seeds, "val_accuracy": val,
                "test_accuracy": test, "val_accuracy_mean": statistics.fmean(val),
                "val_accuracy_std": statistics.stdev(val) if len(val) > 1 else 0.0,
                "test_accuracy_mean": statistics.fmean(test),
                "test_accuracy_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                "best_seed": best, "run_id": self.runs[best]["run_id"],
                "model_uri": self.runs[best]["model_uri"]}


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
    fixed = {k.removeprefix("fixed."): v for k, v in trial.user_attrs.items()
             if k.startswith("fixed.")}
    return experiment.base_config(**{**fixed, **trial.params, **fidelity})


class Promotion:
    """Re-trains the top configurations of a study, continuing where an earlier call stopped."""

    def __init__(self, experiment: Experiment, study: optuna.Study, tracker: Tracker,
                 top: int, seeds: int, in_process: bool = False):
        self.experiment, self.study, self.tracker = experiment, study, tracker
        self.fidelity = experiment.promotion.fidelity
        self.fidelity_key = json.dumps(self.fidelity, sort_keys=True)
        self.in_process = in_process
        self.candidates = [Candidate(t, trial_config(t, experiment, self.fidelity))
                           for t in top_trials(study, top)]
        self.seeds = seeds
        if not self.candidates:
            raise UserError(f"study {study.study_name!r} has no completed trial to promote")

    def _finished_runs(self) -> None:
        """Read the runs an earlier call finished into the candidates; fail runs it left."""
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], max_results=10000,
            filter_string=f"tags.mlflow.parentRunId = '{self.tracker.parent_run_id}' "
                          f"and tags.`{STAGE}` = 'promotion'")
        by_trial = {c.trial.number: c for c in self.candidates}
        for run in runs:
            tags, status = run.data.tags, run.info.status
            if status == "RUNNING":  # its promote was killed
                self.tracker.end_run(run.info.run_id, "FAIL", "promote died during the run")
            candidate = by_trial.get(int(tags[PROMOTES]))
            if (status == "FINISHED" and candidate and tags.get(FIDELITY) == self.fidelity_key
                    and "model_uri" in tags):
                candidate.runs[int(tags[SEED])] = {
                    "val_accuracy": run.data.metrics["best_val_accuracy"],
                    "test_accuracy": run.data.metrics["test_accuracy"],
                    "run_id": run.info.run_id, "model_uri": tags["model_uri"]}

    def run(self) -> dict:
        """Train what is missing, choose the winner, record it; returns its summary."""
        self._finished_runs()
        todo = [(c, c.config.seed + i) for c in self.candidates for i in range(self.seeds)
                if c.config.seed + i not in c.runs]
        done = len(self.candidates) * self.seeds - len(todo)
        print(f"promote: {len(self.candidates)} configuration(s) x {self.seeds} seed(s) at "
              f"{short(self.fidelity) or 'the search fidelity'}; {done} run(s) done before, "
              f"{len(todo)} to go", flush=True)
        if todo:
            dataset = load_experiment_data(self.experiment, **{
                k: v for k, v in self.fidelity.items() if k.startswith("max_")})
            inputs = dataset_inputs(dataset)
            pool = None if self.in_process else WarmProcessPool(len(todo), PRELOAD)
            try:
                for candidate, seed in todo:
                    try:
                        self._train(candidate, seed, dataset, inputs, pool)
                    except Exception as e:  # recorded on its run; the others go on
                        print(f"promote: trial {candidate.trial.number} seed {seed} FAIL: "
                              f"{str(e).splitlines()[0][:200]} (run `sweep promote` again "
                              "to retry it)", flush=True)
            finally:
                if pool:
                    pool.close()
        return self._choose()

    def _train(self, candidate: Candidate, seed: int, dataset, inputs, pool) -> None:
        config = replace(candidate.config, seed=seed)
        number = candidate.trial.number
        tags = {STAGE: "promotion", PROMOTES: str(number), SEED: str(seed),
                FIDELITY: self.fidelity_key}
        print(f"promote: trial {number} seed {seed} started", flush=True)
        with self.tracker.child_run(f"promote-trial-{number}-seed-{seed}",
                                    {**run_params(config), "promotes_trial": number}, tags,
                                    inputs) as run:
            job = TrialJob(config=asdict(config), dataset=dataset, run_id=run.run_id,
                           tracking_uri=self.tracker.tracking_uri)
            outcome = run_job(job) if pool is None else pool.call(run_job, job)
            run.tags["model_uri"] = outcome["model_uri"]
        candidate.runs[seed] = {"val_accuracy": outcome["best_val_accuracy"],
                                "test_accuracy": outcome["test_accuracy"],
                                "run_id": run.run_id, "model_uri": outcome["model_uri"]}
        print(f"promote: trial {number} seed {seed}: val_accuracy="
              f"{outcome['best_val_accuracy']:.4f} test_accuracy="
              f"{outcome['test_accuracy']:.4f} ({outcome['train_seconds']:.0f}s training)",
              flush=True)

    def _choose(self) -> dict:
        ranked = sorted((c.summary() for c in self.candidates if c.runs),
                        key=lambda s: (-s["val_accuracy_mean"], s["trial"]))
        if not ranked:
            raise TrainingError("no promotion run finished; run `sweep promote` again")
        for s in ranked:
            print(f"promote: trial {s['trial']}: val_accuracy {s['val_accuracy_mean']:.4f} "
                  f"± {s['val_accuracy_std']:.4f}, test_accuracy {s['test_accuracy_mean']:.4f}"
                  f" ± {s['test_accuracy_std']:.4f} over seeds {s['seeds']}", flush=True)
        winner = {**ranked[0], "fidelity": self.fidelity,
                  "candidates": [{k: s[k] for k in ("trial", "val_accuracy_mean",
                                                    "val_accuracy_std", "test_accuracy_mean")}
                                 for s in ranked]}
        self.study.set_user_attr(WINNER_ATTR, winner)
        client, parent = self.tracker.client, self.tracker.parent_run_id
        client.set_tag(parent, "promoted_trial", str(winner["trial"]))
        for key in ("val_accuracy_mean", "val_accuracy_std", "test_accuracy_mean"):
            client.log_metric(parent, f"promoted_{key}", winner[key])
        print(f"promote: winner trial {winner['trial']} (best mean validation accuracy); "
              f"its seed-{winner['best_seed']} model is the one `best --export` writes",
              flush=True)
        return winner
