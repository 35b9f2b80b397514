"""The experiment's sampler: what make_sampler and open_study build, judged by what it proposes,
and the refusals of samplers that cannot run here. Fast: nothing trains."""

import sys

import optuna
import pytest

from bertclf.errors import UserError
from sweep.experiment import Sampler, load_experiment, parse_experiment
from sweep.study import make_sampler, open_storage, open_study

SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0),
         "c": optuna.distributions.CategoricalDistribution(["a", "b", "c", "d"])}


def proposals(sampler: optuna.samplers.BaseSampler, n: int = 6) -> list[dict]:
    """The first `n` points `sampler` proposes, each told its x as the value."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask(SPACE)
        points.append(trial.params)
        study.tell(trial, trial.params["x"])
    return points


def choices_while_running(sampler: optuna.samplers.BaseSampler) -> list[str]:
    """Ten finished trials where c = "a" is best, then six asked and left RUNNING (as several
    workers would): the c each of those is given."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for c in "aabbccddaa":
        study.add_trial(optuna.trial.create_trial(
            params={"c": c}, distributions={"c": SPACE["c"]}, value=1.0 if c == "a" else 0.0))
    return [study.ask({"c": SPACE["c"]}).params["c"] for _ in range(6)]


def test_tpe_does_not_propose_the_running_trials_point_again():
    """The constant liar: trials still running count as bad, so parallel workers spread out
    instead of all taking the best point so far (as TPE without it does)."""
    tpe = make_sampler(Sampler("tpe", {"n_startup_trials": 0}), seed=0)
    spread = choices_while_running(tpe)
    control = choices_while_running(optuna.samplers.TPESampler(
        n_startup_trials=0, seed=0, constant_liar=False))
    assert set(control) == {"a"}  # without the lie: the same point six times
    assert len(set(spread)) > 1 and spread[0] == "a", spread


def test_tpe_settings_are_applied():
    """n_startup_trials: TPE proposes at random (its seed's random points) until that many
    trials finished, then on its own."""
    random_points = proposals(optuna.samplers.RandomSampler(seed=3))
    assert proposals(make_sampler(Sampler("tpe", {"n_startup_trials": 20}), 3)) == random_points
    early = proposals(make_sampler(Sampler("tpe", {"n_startup_trials": 2}), 3))
    assert early[:2] == random_points[:2] and early != random_points


def test_random_sampler_and_its_seed():
    sampler = make_sampler(Sampler("random"), 5)
    assert isinstance(sampler, optuna.samplers.RandomSampler)
    assert proposals(sampler) == proposals(optuna.samplers.RandomSampler(seed=5))
    assert proposals(make_sampler(Sampler("random"), 6)) != proposals(
        make_sampler(Sampler("random"), 5))


def test_open_study_uses_the_spec_and_moves_the_seed_on(tmp_path):
    """A continued study's sampler is seeded with sampler_seed + its trial count."""
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    pruner = optuna.pruners.NopPruner()
    study, created = open_study("s", storage, pruner=pruner, sampler=Sampler("random"),
                                sampler_seed=10)
    assert created and isinstance(study.sampler, optuna.samplers.RandomSampler)
    first = study.ask(SPACE).params
    assert first == proposals(optuna.samplers.RandomSampler(seed=10), 1)[0]
    for _ in range(2):
        study.tell(study.ask(SPACE), 0.5)
    again, created = open_study("s", storage, pruner=pruner, sampler=Sampler("random"),
                                sampler_seed=10)
    assert not created
    assert again.ask(SPACE).params == proposals(optuna.samplers.RandomSampler(seed=13), 1)[0]
    default, _ = open_study("t", storage, pruner=pruner)
    assert isinstance(default.sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("kind, module", [("gp", "torch"), ("cmaes", "cmaes")])
def test_a_sampler_whose_package_is_missing_is_refused(monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # not importable, whatever is installed
    with pytest.raises(UserError) as caught:
        make_sampler(Sampler(kind), 0)
    message = str(caught.value)
    assert f"sampler {kind} needs the {module} package" in message and "\n" not in message


def test_missing_package_is_refused_when_a_sweep_loads_the_file(tmp_path, monkeypatch):
    (tmp_path / "data.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tneg\n")
    path = tmp_path / "gp.toml"
    path.write_text('[data]\npath = "data.tsv"\n\n[search]\nencoder = "tiny"\nseq_len = 32\n'
                    'lr = { low = 1e-4, high = 1e-2, log = true }\n\n[study]\n'
                    'sampler = { kind = "gp", n_startup_trials = 4 }\n')
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError) as caught:
        load_experiment(path)
    assert str(caught.value) == (f"experiment {path}: study.sampler: sampler gp needs the torch "
                                 "package, which is not installed here (pip install torch), or "
                                 "choose another sampler")
    # `promote` re-parses the study's copy of the file and never samples: no torch needed
    parsed = parse_experiment(path.read_text(), path)
    assert parsed.sampler == Sampler("gp", {"n_startup_trials": 4})
