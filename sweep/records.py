"""What a study and its runs hold: the names of the attributes and tags sweep stores.

The values are stored data (studies and runs written before are read with them) and
what the tests assert on: rename a constant if you must, never change its string.
"""
import optuna

# Optuna study attributes
EXPERIMENT_ATTR = "experiment"  # {"path", "text"}: the experiment file it was run with
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # its MLflow parent run
# The promoted winner, as `best` shows it: the winner's summary (trial, seeds, per-seed and
# mean/std accuracies, best_seed, run_id, model_uri, and each seed's run_ids and
# model_uris), its fidelity, the ranked candidates,
# and with a control arm the control's summary and the winner's margin over it.
WINNER_ATTR = "promotion"

# Optuna trial attributes of a search trial
RUN_ID_ATTR = "mlflow_run_id"  # its MLflow run
ERROR_ATTR = "error"  # why it failed (a claim's too)
TEST_ACCURACY_ATTR = "test_accuracy"  # (a claim's too)
MODEL_URI_ATTR = "model_uri"  # its logged model (a claim's too)
SUMMARY_ATTRS = (TEST_ACCURACY_ATTR, "test_loss", "best_epoch", MODEL_URI_ATTR,
                 "train_seconds")  # of its outcome (train_seconds: the budget's overhead)
SPLIT_SEED_ATTR = "split_seed"  # the seed of its train/validation split
FIXED_PREFIX = "fixed."  # + a parameter name: a value the experiment fixes, not searched
DEFAULTS_ATTR = "sweep.defaults"  # True on the trial that tries the tool's defaults
RETRY_OF = "sweep.retry_of"  # the dead worker's trial it re-runs
OWNER_ATTR = "sweep.owner"  # {"host", "boot", "pid", "started"} of the process running it
BEAT_ATTR = "sweep.heartbeat"  # unix time of the owner's last heartbeat

# Optuna trial attributes of a claim (a trial of the promotion claims study)
RUN_KEY = "sweep.run"  # which run it claims: trial, seed and fidelity
WITHDRAWN = "sweep.withdrawn"  # withdrawn: another claim of the same run came first
CLAIM_RUN_ID_ATTR = "run_id"  # the MLflow run of the claimed promotion run

# MLflow run tags of a trial's run
STUDY_TAG = "optuna.study"  # (the parent run's too)
TRIAL_NUMBER_TAG = "optuna.trial_number"
STATE_TAG = "optuna.trial_state"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the parent run (a promotion run's too)
ERROR_TAG = "error"  # why it failed (a promotion run's too)
DROPPED_TAG = "model_dropped"  # "true" once its logged model was deleted (keep_models)

# MLflow run tags of a promotion run
STAGE = "sweep.stage"  # PROMOTION_STAGE
PROMOTION_STAGE = "promotion"
PROMOTES = "sweep.promotes_trial"  # the trial's number, or "defaults" for the control
SEED = "sweep.seed"
FIDELITY = "sweep.fidelity"
CLAIM = "sweep.claim"  # the number of its claim in the claims study
CONTROL_TAG = "sweep.control"  # "true" on the control arm's runs: the tool's defaults
MODEL_URI_TAG = "model_uri"  # its logged model

# MLflow run tags of an ensemble's run (`best --register NAME --ensemble`)
ENSEMBLE_STAGE = "ensemble"  # its STAGE
ENSEMBLE_RUNS_TAG = "sweep.ensemble_of"  # the members' run ids, a JSON list

# MLflow run tags of the parent run
EXPERIMENT_FILE_TAG = "experiment_file"
BEST_TRIAL_TAG = "best_trial"
PROMOTED_TRIAL_TAG = "promoted_trial"


def fixed_attr(name: str) -> str:
    """The trial attribute holding the fixed parameter `name`."""
    return FIXED_PREFIX + name


def fixed_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The parameters the experiment fixed for `trial`, by name (without the prefix)."""
    return {k.removeprefix(FIXED_PREFIX): v for k, v in trial.user_attrs.items()
            if k.startswith(FIXED_PREFIX)}
