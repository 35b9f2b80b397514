"""The MLflow side without training: dataset inputs whose digest follows the split, sample
and seed; the experiment made for a study and its UI link; read-only lookups create nothing."""

import optuna
from mlflow.tracking import MlflowClient
from sweep_helpers import write_data

from bertclf.run.config import TrainConfig
from sweep.tracking import Tracker, dataset_inputs, study_ui_link, ui_link


def digests(data, **options) -> dict[str, tuple[str, str]]:
    """context -> (name, digest) of the dataset inputs of `data` loaded with `options`."""
    dataset = TrainConfig(data=str(data), **options).load_data()
    return {tag.value: (d.dataset.name, d.dataset.digest)
            for d in dataset_inputs(dataset) for tag in d.tags}


def test_dataset_digests_follow_the_split_the_sample_and_the_seed(tmp_path):
    data = write_data(tmp_path / "reviews.tsv", per_class=100)
    base = digests(data, max_examples=60)
    assert {context: name for context, (name, _) in base.items()} == {
        "training": "reviews.tsv:train", "validation": "reviews.tsv:validation",
        "test": "reviews.tsv:test"}
    assert digests(data, max_examples=60) == base, "the same split, the same digests"
    # another sample (60 -> 50 of the 128 training reviews; validation's 32 stay whole)
    assert digests(data, max_examples=50)["training"][1] != base["training"][1]
    for other in (digests(data, max_examples=60, split_seed=7),  # another split
                  digests(data, max_examples=60, val_fraction=0.3)):
        assert all(other[c][1] != base[c][1] for c in ("training", "validation")), other
    # the training seed alone does not move the split
    assert digests(data, max_examples=60, seed=7, split_seed=42) == base


def test_a_study_gets_a_model_training_experiment_and_its_link(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert study_ui_link(uri, "linked") is None
    assert not (tmp_path / "mlflow.db").exists(), "a read-only lookup creates nothing"
    study = optuna.create_study(study_name="linked", direction="maximize")
    tracker = Tracker(uri, study)
    experiment = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    link = (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}"
            "?workflowType=machine_learning")
    assert tracker.ui_link() == f"{link} (serve it with: mlflow ui --backend-store-uri {uri})"
    assert study_ui_link(uri, "linked") == tracker.ui_link()
    assert ui_link("http://mlflow.example:5000/", "7") == (
        "http://mlflow.example:5000/#/experiments/7?workflowType=machine_learning")
