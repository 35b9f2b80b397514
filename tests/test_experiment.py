"""Experiment files: parsing, checking, the search space they give, and bad input on the CLI.

Fast: nothing here trains a model.
"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from bertclf.encoders.map import load_map
from bertclf.errors import UserError
from sweep.experiment import Promotion, Pruner, Range, Sampler, load_experiment, parse_experiment
from sweep.space import suggest_config
from sweep.study import make_pruner

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
description = "a small test sweep"

[data]
path = "data.tsv"
max_examples = 60

[search]
encoder = ["tiny"]
seq_len = 32
epochs = 2
lr = { low = 1e-3, high = 5e-3, log = true }
batch_size = [16, 32]

[study]
pruner = "median"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def with_line(section: str, line: str, base: str = GOOD) -> str:
    """`base` with `line` added at the top of `[section]` ("" for the top level)."""
    if not section:
        return line + "\n" + base
    header = f"[{section}]\n"
    assert header in base, section
    return base.replace(header, header + line + "\n", 1)


def replaced(old: str, new: str, base: str = GOOD) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """An experiment folder with a tiny data file; the working folder is somewhere else."""
    exp = tmp_path / "exp"
    write(exp, "data.tsv", "text\tlabel\ngood film\tpos\nbad film\tneg\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("BERTCLF_ENCODER_MAP", raising=False)
    return exp


# --- good files ----------------------------------------------------------------------------


def test_good_file_is_parsed(folder):
    experiment = load_experiment(write(folder, "small.toml", GOOD))
    assert experiment.space["encoder"] == ["tiny"]
    assert experiment.space["seq_len"] == 32
    assert experiment.space["epochs"] == 2
    assert experiment.space["lr"] == Range(1e-3, 5e-3, log=True)
    assert experiment.space["batch_size"] == [16, 32]
    assert experiment.pruner == Pruner("median")
    assert experiment.sampler == Sampler("tpe")  # the default
    assert experiment.study_name == "small"  # the file's stem by default
    assert experiment.trials == 10  # no [study] trials: the default
    assert experiment.data_options["max_examples"] == 60
    config = experiment.base_config(encoder="tiny", lr=1e-3)
    config.validate()
    assert config.max_examples == 60


def test_study_section_values(folder):
    text = replaced('pruner = "median"', 'pruner = "hyperband"\nname = "mine"\ntrials = 7\n'
                    'timeout_minutes = 2.5\nsampler_seed = 11')
    experiment = load_experiment(write(folder, "s.toml", text))
    assert (experiment.study_name, experiment.trials, experiment.timeout_minutes,
            experiment.pruner.kind, experiment.sampler_seed) == ("mine", 7, 2.5, "hyperband", 11)


def test_pruner_table_and_hyperband_resource(folder):
    """A pruner is a kind or a table of settings; hyperband's resource is the epoch, up to
    the most epochs a trial may run."""
    text = replaced('pruner = "median"', 'pruner = { kind = "median", n_startup_trials = 1 }')
    experiment = load_experiment(write(folder, "p.toml", text))
    assert experiment.pruner == Pruner("median", {"n_startup_trials": 1})
    # n_startup_trials = 1 reaches Optuna: the second trial, below the first, is pruned.
    study = optuna.create_study(direction="maximize", pruner=make_pruner(experiment.pruner, 2))
    first = study.ask()
    first.report(0.9, step=1)
    study.tell(first, 0.9)
    second = study.ask()
    second.report(0.1, step=1)
    assert second.should_prune()
    ranged = replaced('pruner = "median"', 'pruner = "hyperband"',
                      replaced("epochs = 2", "epochs = { low = 3, high = 9 }"))
    experiment = load_experiment(write(folder, "h.toml", ranged))
    assert experiment.max_epochs == 9
    assert isinstance(make_pruner(experiment.pruner, experiment.max_epochs),
                      optuna.pruners.HyperbandPruner)


def test_sampler_name_or_table(folder):
    text = with_line("study", 'sampler = "random"')
    assert load_experiment(write(folder, "r.toml", text)).sampler == Sampler("random")
    text = with_line("study",
                     'sampler = { kind = "tpe", n_startup_trials = 5, n_ei_candidates = 12 }')
    assert load_experiment(write(folder, "t.toml", text)).sampler == Sampler(
        "tpe", {"n_startup_trials": 5, "n_ei_candidates": 12})


def test_promote_section(folder):
    text = GOOD + "\n[promote]\ntop = 2\nseeds = 4\nepochs = 3\nmax_train_examples = 100\n"
    experiment = load_experiment(write(folder, "pr.toml", text))
    assert experiment.promotion == Promotion(2, 4, {"epochs": 3, "max_train_examples": 100})
    assert load_experiment(write(folder, "np.toml", GOOD)).promotion == Promotion(3, 3, {})


def test_evaluations_inside_the_epoch_are_searchable_and_promotable(folder):
    text = with_line("search", "eval_every = [0.25, 4]\neval_examples = 20")
    experiment = load_experiment(write(folder, "ev.toml", text + "[promote]\neval_every = 0\n"))
    assert experiment.space["eval_every"] == [0.25, 4]
    assert experiment.promotion.fidelity == {"eval_every": 0}
    assert experiment.base_config(eval_every=4, eval_examples=20).eval_every == 4


def test_split_seed_is_fixed_for_every_trial(folder):
    """The validation split and samples are the study's, not a trial's: [data] split_seed, else
    a fixed seed (so a trial logged with seed 7 splits as `bertclf train --seed 7` does),
    else the default 42 when the seed is searched."""
    fixed = load_experiment(write(folder, "f.toml", with_line("search", "seed = 7")))
    assert fixed.split_seed == 7 and fixed.base_config().data_seed == 7
    searched = load_experiment(write(folder, "s.toml", with_line("search", "seed = [1, 2]")))
    assert searched.split_seed == 42
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [suggest_config(study.ask(), searched) for _ in range(6)]
    assert {c.seed for c in configs} == {1, 2}
    assert {c.data_seed for c in configs} == {42}
    assert {c.split_seed for c in configs} == {42}, "logged with the trial's parameters"
    given = load_experiment(write(folder, "g.toml", with_line(
        "data", "split_seed = 3", with_line("search", "seed = 7"))))
    config = suggest_config(optuna.create_study().ask(), given)
    assert (config.seed, config.data_seed) == (7, 3)


def test_an_experiment_reparses_from_its_text(folder):
    """A study keeps its experiment file's text; parsing it again, against the file's path,
    gives the same experiment even after the file is gone."""
    path = write(folder, "small.toml", GOOD + "\n[promote]\ntop = 2\n")
    first = load_experiment(path)
    path.unlink()
    again = parse_experiment(first.text, first.path)
    assert (again.space, again.data_options, again.promotion, again.pruner) == (
        first.space, first.data_options, first.promotion, first.pruner)


def test_relative_data_path_is_resolved_against_the_file(folder):
    experiment = load_experiment(write(folder, "small.toml", GOOD))
    assert Path(experiment.data_options["path"]).is_absolute()
    assert Path(experiment.data_options["path"]) == (folder / "data.tsv").resolve()
    assert Path(experiment.base_config().data) == (folder / "data.tsv").resolve()


def test_data_in_a_parent_folder(folder):
    text = replaced('path = "data.tsv"', 'path = "../data.tsv"')
    experiment = load_experiment(write(folder, "sub/deeper.toml", text))
    assert Path(experiment.data_options["path"]) == (folder / "data.tsv").resolve()


def test_data_override_replaces_the_files_path(folder, tmp_path):
    experiment = load_experiment(write(folder, "small.toml", GOOD), data_override="other.tsv")
    # a command-line path is the user's: relative to the working folder, not to the file
    assert Path(experiment.data_options["path"]).resolve() == (tmp_path / "elsewhere" / "other.tsv")
    assert experiment.data_options["max_examples"] == 60  # the rest of [data] stays


def test_data_override_supplies_a_missing_path(folder):
    text = replaced('path = "data.tsv"\n', "")
    path = write(folder, "nopath.toml", text)
    with pytest.raises(UserError, match="needs a path"):
        load_experiment(path)
    assert load_experiment(path, data_override="imdb").data_options["path"] == "imdb"


def test_imdb_is_not_a_path(folder):
    experiment = load_experiment(write(folder, "i.toml", replaced('"data.tsv"', '"imdb"')))
    assert experiment.data_options["path"] == "imdb"


def test_encoder_all_is_the_whole_map_but_the_random_tiny(folder):
    experiment = load_experiment(write(folder, "all.toml", replaced('["tiny"]', '"all"')))
    expected = [name for name in load_map() if name != "tiny"]
    assert experiment.space["encoder"] == expected
    assert "minilm" in expected  # the pretrained built-in, which loads offline
    assert len(expected) > 10
    listed = load_experiment(write(folder, "all2.toml", replaced('["tiny"]', '["all"]')))
    assert listed.space["encoder"] == expected


def test_encoder_all_includes_the_users_map(folder):
    map_file = write(folder, "map.toml", '[encoders.mine]\nencoder = "enc"\npreprocess = "pre"\n')
    text = replaced('encoder = ["tiny"]', f'encoder = "all"\nencoder_map = "{map_file}"')
    experiment = load_experiment(write(folder, "all.toml", text))
    assert "mine" in experiment.space["encoder"]
    assert "tiny" not in experiment.space["encoder"]


def test_encoder_from_a_map_file_given_by_absolute_path(folder):
    map_file = write(folder, "map.toml", '[encoders.mine]\nencoder = "enc"\npreprocess = "pre"\n')
    text = replaced('encoder = ["tiny"]', f'encoder = ["mine", "tiny"]\nencoder_map = "{map_file}"')
    experiment = load_experiment(write(folder, "m.toml", text))
    assert experiment.space["encoder"] == ["mine", "tiny"]


def test_relative_encoder_map_is_resolved_against_the_file(folder):
    """Like the data path, a relative encoder map must not depend on the working folder.
    """
    write(folder, "map.toml", '[encoders.mine]\nencoder = "enc"\npreprocess = "pre"\n')
    text = replaced('encoder = ["tiny"]', 'encoder = ["mine"]\nencoder_map = "map.toml"')
    experiment = load_experiment(write(folder, "m.toml", text))
    assert Path(experiment.space["encoder_map"]) == (folder / "map.toml").resolve()


def test_a_local_encoder_folder_is_accepted(folder, tmp_path):
    local = tmp_path / "my_encoder"
    (local / "encoder").mkdir(parents=True)
    (local / "preprocess").mkdir()
    text = replaced('["tiny"]', f'["tiny", "{local}"]')
    experiment = load_experiment(write(folder, "l.toml", text))
    assert experiment.space["encoder"] == ["tiny", str(local)]


# --- bad files -----------------------------------------------------------------------------

BAD = {
    "unknown top-level key": (with_line("", "colour = 1"), "unknown key(s) in [top level]: colour"),
    "unknown [search] key": (with_line("search", "learning_rate = 1e-3"),
                            "unknown key(s) in [search]: learning_rate"),
    "unknown [data] key": (with_line("data", 'folder = "x"'), "unknown key(s) in [data]: folder"),
    "unknown [study] key": (with_line("study", 'direction = "minimize"'),
                           "unknown key(s) in [study]: direction"),
    "unknown range key": (replaced("log = true", 'log = true, scale = "log"'), "scale"),
    "lr of the wrong type": (replaced("lr = { low = 1e-3, high = 5e-3, log = true }",
                                      'lr = "fast"'), "search.lr"),
    "fractional batch size": (replaced("batch_size = [16, 32]", "batch_size = 1.5"),
                              "search.batch_size"),
    "boolean batch size": (replaced("batch_size = [16, 32]", "batch_size = true"),
                           "search.batch_size"),
    "string range ends": (replaced("low = 1e-3", 'low = "a"'), "must be numbers"),
    "range without high": (replaced("lr = { low = 1e-3, high = 5e-3, log = true }",
                                    "lr = { low = 1e-3 }"), "low and high"),
    "lr range from zero": (replaced("lr = { low = 1e-3, high = 5e-3, log = true }",
                                    "lr = { low = 0.0, high = 5e-3 }"), "search.lr"),
    "negative lr": (replaced("lr = { low = 1e-3, high = 5e-3, log = true }",
                             "lr = { low = -1e-3, high = 5e-3 }"), "search.lr"),
    "low above high": (replaced("low = 1e-3, high = 5e-3", "low = 5e-3, high = 1e-3"),
                       "is above high"),
    "log range from zero": (replaced("low = 1e-3", "low = 0.0"), "log range needs low > 0"),
    "empty encoder list": (replaced('encoder = ["tiny"]', "encoder = []"), "empty list"),
    "batch size 0": (replaced("batch_size = [16, 32]", "batch_size = 0"), "search.batch_size"),
    "batch size 0 among choices": (replaced("batch_size = [16, 32]", "batch_size = [16, 0]"),
                                   "search.batch_size = 0"),
    "dropout range up to 1": (with_line("search", "dropout = { low = 0.0, high = 1.0 }"),
                              "search.dropout"),
    "unknown encoder": (replaced('["tiny"]', '["tiny", "no-such-encoder"]'),
                        "unknown encoder 'no-such-encoder'"),
    "unknown pruner": (replaced('pruner = "median"', 'pruner = "random"'),
                       "study.pruner must be one of"),
    "pruner table without kind": (replaced('pruner = "median"', 'pruner = { lower = 0.5 }'),
                                  "kind"),
    "unknown pruner setting": (replaced('pruner = "median"',
                                        'pruner = { kind = "median", patience = 2 }'),
                               "study.pruner: "),
    "unknown sampler": (with_line("study", 'sampler = "hyperband"'),
                        "study.sampler must be one of tpe, random, gp, cmaes"),
    "sampler table without kind": (with_line("study", "sampler = { n_startup_trials = 5 }"),
                                   'study.sampler must be a name or a table with kind'),
    "unknown sampler setting": (with_line("study", 'sampler = { kind = "tpe", gamma = 3 }'),
                                "study.sampler: sampler tpe has no setting 'gamma'"),
    "sampler seed as a setting": (with_line("study", 'sampler = { kind = "random", seed = 1 }'),
                                  "the seed is study.sampler_seed"),
    "constant liar off": (with_line("study",
                                    'sampler = { kind = "tpe", constant_liar = false }'),
                          "has no setting 'constant_liar'"),
    "sampler setting of the wrong type": (
        with_line("study", 'sampler = { kind = "tpe", n_startup_trials = "five" }'),
        "study.sampler: sampler tpe: n_startup_trials = 'five' is not of type int"),
    "boolean for an int sampler setting": (
        with_line("study", 'sampler = { kind = "tpe", n_startup_trials = true }'),
        "n_startup_trials = True is not of type int"),
    "cmaes over categorical dimensions": (
        with_line("study", 'sampler = "cmaes"'),
        "study.sampler: cmaes cannot search categorical dimensions (batch_size, encoder)"),
    "keep_models 0": (with_line("study", "keep_models = 0"), "keep_models"),
    "negative split seed": (with_line("data", "split_seed = -1"), "split_seed"),
    "unknown [promote] key": (GOOD + "[promote]\nlr = 1e-3\n",
                              "unknown key(s) in [promote]: lr"),
    "promote top 0": (GOOD + "[promote]\ntop = 0\n", "promote.top"),
    "promote epochs 0": (GOOD + "[promote]\nepochs = 0\n", "promote.epochs"),
    "promote fractional epochs": (GOOD + "[promote]\nepochs = 1.5\n", "promote.epochs"),
    "zero trials": (with_line("study", "trials = 0"), "study.trials must be"),
    "fractional eval_every steps": (with_line("search", "eval_every = [0.25, 1.5]"),
                                    "search.eval_every = 1.5"),
    "promote eval_examples 1": (GOOD + "[promote]\neval_examples = 1\n",
                                "promote.eval_examples"),
    "no data path": (replaced('path = "data.tsv"\n', ""), "needs a path"),
    "not TOML": ("[data\npath = 1\n", "not valid TOML"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_file_is_a_one_line_user_error(folder, name):
    text, fragment = BAD[name]
    path = write(folder, "bad.toml", text)
    with pytest.raises(UserError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert fragment in message, message
    assert "\n" not in message, message
    assert str(path) in message  # says which file


def test_missing_file(folder):
    with pytest.raises(UserError, match="no such file"):
        load_experiment(folder / "nope.toml")


# --- the search space ----------------------------------------------------------------------

SPACE = """\
[data]
path = "data.tsv"

[search]
encoder = ["tiny", "other"]
encoder_map = "{map}"
seq_len = 32
lr = {{ low = 1e-4, high = 1e-2, log = true }}
dropout = {{ low = 0.0, high = 0.3 }}
warmup_fraction = {{ low = 0.0, high = 0.2, step = 0.05 }}
epochs = {{ low = 1, high = 4 }}
batch_size = [8, 16, 32]
patience = {{ low = 2, high = 16, log = true }}
wd_schedule = ["constant", "piecewise", "lr"]
seed = 7
"""


@pytest.fixture
def space_experiment(folder):
    map_file = write(folder, "map.toml",
                     '[encoders.other]\nencoder = "enc"\npreprocess = "pre"\n')
    return load_experiment(write(folder, "space.toml", SPACE.format(map=map_file)))


def test_suggest_config_samples_within_the_space(space_experiment):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"encoder": set(), "batch_size": set(), "wd_schedule": set()}
    for _ in range(30):
        trial = study.ask()
        config = suggest_config(trial, space_experiment)
        config.validate()
        # fixed values pass through, and are kept on the trial
        assert config.seq_len == 32 and config.seed == 7
        assert trial.user_attrs["fixed.seq_len"] == 32
        assert trial.user_attrs["fixed.seed"] == 7
        assert "seq_len" not in trial.params
        # categorical choices
        assert config.encoder in ("tiny", "other")
        assert config.batch_size in (8, 16, 32)
        assert config.wd_schedule in ("constant", "piecewise", "lr")
        for key in seen:
            seen[key].add(getattr(config, key))
        # ranges: ints stay ints
        assert type(config.epochs) is int and type(config.patience) is int
        assert type(config.batch_size) is int
        assert isinstance(config.lr, float)
        study.tell(trial, 0.5)
    assert seen["encoder"] == {"tiny", "other"}
    assert seen["batch_size"] == {8, 16, 32}
    assert len(seen["wd_schedule"]) == 3
    assert set(study.trials[0].params) == {"encoder", "lr", "dropout", "warmup_fraction",
                                           "epochs", "batch_size", "patience", "wd_schedule"}
    # each range asked of Optuna as written in the file
    distributions = study.trials[0].distributions
    assert distributions["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert distributions["dropout"] == FloatDistribution(0.0, 0.3)
    assert distributions["warmup_fraction"] == FloatDistribution(0.0, 0.2, step=0.05)
    assert distributions["epochs"] == IntDistribution(1, 4)
    assert distributions["patience"] == IntDistribution(2, 16, log=True)
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == len(lrs)  # really sampled, not fixed


def test_suggest_config_records_the_data_section(space_experiment):
    study = optuna.create_study()
    config = suggest_config(study.ask(), space_experiment)
    assert Path(config.data) == Path(space_experiment.data_options["path"])


def test_float_field_with_whole_number_ends_is_sampled_as_floats(folder):
    """`weight_decay = { low = 0, high = 1 }` is a float range written with whole numbers.
    """
    text = with_line("search", "weight_decay = { low = 0, high = 1 }")
    experiment = load_experiment(write(folder, "wd.toml", text))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    assert isinstance(suggest_config(trial, experiment).weight_decay, float)
    assert trial.distributions["weight_decay"] == FloatDistribution(0.0, 1.0)


# --- bad input on the command line ---------------------------------------------------------


def sweep_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def written_stores(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name in ("optuna.db", "mlflow.db", "mlruns", "mlartifacts"))


def test_cli_bad_experiment_exits_2_with_one_line_and_writes_nothing(folder, tmp_path):
    bad = write(folder, "bad.toml", with_line("search", "learning_rate = 1e-3"))
    work = tmp_path / "elsewhere"
    result = sweep_cli(work, "run", "--experiment", str(bad), "--trials", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sweep: error:") and "learning_rate" in lines[0]
    assert "Traceback" not in result.stderr
    assert written_stores(work) == []


def test_cli_missing_experiment_file(tmp_path):
    result = sweep_cli(tmp_path, "run", "--experiment", "nope.toml", "--trials", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sweep: error: experiment nope.toml: no such file"]
    assert written_stores(tmp_path) == []


def test_cli_zero_trials(folder, tmp_path):
    good = write(folder, "good.toml", GOOD)
    work = tmp_path / "elsewhere"
    result = sweep_cli(work, "run", "--experiment", str(good), "--trials", "0")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert written_stores(work) == []


def test_cli_missing_data_writes_nothing(folder, tmp_path):
    """A data path that does not exist is bad input too: one line, exit 2, nothing written.
    """
    bad = write(folder, "missing.toml", replaced('"data.tsv"', '"missing.tsv"'))
    work = tmp_path / "elsewhere"
    result = sweep_cli(work, "run", "--experiment", str(bad), "--trials", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sweep: error:")]
    assert len(errors) == 1 and "missing.tsv" in errors[0], result.stderr
    if (work / "mlflow.db").exists():  # at the very least no run may be left RUNNING
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        ids = [e.experiment_id for e in client.search_experiments()]
        running = [r.info.run_name for r in client.search_runs(ids)
                   if r.info.status == "RUNNING"]
        assert running == [], f"runs left RUNNING after bad input: {running}"
    assert written_stores(work) == []
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
