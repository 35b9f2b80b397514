"""optuna-dashboard (the `ui` extra) on a study made the way a sweep makes it: the dashboard's
JSON API lists the study, its trials and its objective's name."""

import optuna
from servers import bin_command, group_is_gone, serving
from sweep_helpers import STUDY, free_port, http_json

from sweep.study import OBJECTIVE, open_storage, open_study

TRIALS = {0.002: 0.75, 0.004: 0.8125}  # lr -> val_accuracy


def make_study(storage_url: str) -> None:
    """A sweep's study (through `open_study`) with two finished trials, one epoch each."""
    study, created = open_study(STUDY, open_storage(storage_url),
                                pruner=optuna.pruners.NopPruner())
    assert created
    for lr, accuracy in TRIALS.items():
        study.enqueue_trial({"lr": lr})
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 5e-3, log=True)
        trial.report(accuracy, step=1)
        study.tell(trial, accuracy)


def test_dashboard_lists_the_study_and_names_its_objective(tmp_path):
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage_url)
    base = f"http://127.0.0.1:{free_port()}"
    command = [bin_command("optuna-dashboard"), storage_url, "--host", "127.0.0.1",
               "--port", base.rsplit(":", 1)[1]]
    with serving(command, f"{base}/api/studies") as server:
        summaries = http_json(f"{base}/api/studies")["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in summaries] == \
            [(STUDY, ["maximize"])]
        detail = http_json(f"{base}/api/studies/{summaries[0]['study_id']}")
    assert group_is_gone(server, timeout=5)
    assert detail["name"] == STUDY
    assert detail["objective_names"] == [OBJECTIVE] == ["val_accuracy"]
    assert [(t["number"], t["state"], t["values"]) for t in detail["trials"]] == \
        [(0, "Complete", [0.75]), (1, "Complete", [0.8125])]
    assert [p["param_external_value"] for t in detail["trials"] for p in t["params"]] == \
        [str(lr) for lr in TRIALS]
    assert [t["number"] for t in detail["best_trials"]] == [1]
    assert detail["has_intermediate_values"] is True
