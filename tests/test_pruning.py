"""Pruning as the experiment file says, in trial-process mode (the default): a pruner that
must prune does, and the pruned trial is PRUNED in Optuna and a finished MLflow run without
an error, carrying the epoch it stopped at; `pruner = "none"` never prunes."""

import pytest
from sweep_helpers import client_for, explain, load_study, mlflow_runs, sweep_cli, write_experiment

pytestmark = pytest.mark.spread

# Pruned after its first epoch whatever it scores: validation accuracy is never above 1.
MUST_PRUNE = '{ kind = "threshold", lower = 1.01 }'


def test_a_pruner_that_must_prune_does(tmp_path):
    write_experiment(tmp_path, pruner=MUST_PRUNE)
    result = sweep_cli(tmp_path, "run", "--trials", 2, "--experiment", "exp.toml",
                       "--study", "pruned")
    assert result.returncode == 0, explain(result)
    trials = load_study(tmp_path, "pruned").trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert "Traceback" not in result.stderr, "a pruned trial is no failure to trace"
    runs = mlflow_runs(tmp_path, "pruned")
    assert runs.running() == []
    for trial in trials:
        assert sorted(trial.intermediate_values) == [1], "pruned after the first epoch"
        assert f"trial {trial.number} PRUNED in " in result.stdout
        assert "nan" not in result.stdout.lower()
        run = runs.by_name()[f"trial-{trial.number}"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == "PRUNED"
        assert run.data.tags["pruned_at_epoch"] == "1"
        assert "error" not in run.data.tags, run.data.tags["error"]
        curve = client_for(tmp_path).get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in curve} == trial.intermediate_values  # same steps
        assert "test_accuracy" not in run.data.metrics


def test_pruner_none_never_prunes(tmp_path):
    """The same setting with `pruner = "none"`: the trial the threshold pruner stops after
    its first epoch runs all its epochs (patience 2 outlasts the 2-epoch budget)."""
    write_experiment(tmp_path, pruner='"none"', extra_search="patience = 2")
    result = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", "unpruned")
    assert result.returncode == 0, explain(result)
    (trial,) = load_study(tmp_path, "unpruned").trials
    assert trial.state.name == "COMPLETE"
    assert sorted(trial.intermediate_values) == [1, 2]
    assert all("pruned_at_epoch" not in r.data.tags
               for r in mlflow_runs(tmp_path, "unpruned").children)


def test_pruning_inside_the_first_epoch(tmp_path):
    """With two evaluations per epoch, the pruner that must prune stops each trial at its
    first evaluation, half-way through epoch 1, with the same step in both stores."""
    write_experiment(tmp_path, pruner=MUST_PRUNE, extra_search="eval_every = 0.5")
    result = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", "early")
    assert result.returncode == 0, explain(result)
    (trial,) = load_study(tmp_path, "early").trials
    assert trial.state.name == "PRUNED"
    assert sorted(trial.intermediate_values) == [1]
    run = mlflow_runs(tmp_path, "early").by_name()["trial-0"]
    assert run.data.tags["pruned_at_step"] == "1"
    assert run.data.tags["pruned_at_epoch"] == "0.5"
    curve = client_for(tmp_path).get_metric_history(run.info.run_id, "val_accuracy")
    assert {m.step: m.value for m in curve} == trial.intermediate_values
    assert "trial 0 PRUNED in " in result.stdout and "after step 1" in result.stdout
