"""GPUs for trial processes: detection without TensorFlow, the --gpus flag, worker slots, and
(end to end) each trial run on its own slot's device.

Fast except the last test, which runs a sweep of 4 tiny trials."""

import os
import stat
import subprocess
import sys

import pytest
from quick_sweeps import small_experiment
from sweep_helpers import ROOT, explain, mlflow_runs, sweep_cli, write_experiment

from bertclf.errors import UserError
from sweep.__main__ import main
from sweep.devices import detect_gpus, parse_gpus, worker_slots

GROWTH = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


pytestmark = pytest.mark.spread  # each test stands alone (tests/conftest.py)


def fake_nvidia_smi(folder, output: str, code: int = 0):
    """An `nvidia-smi` that prints `output` for `-L` and exits `code`, as a file in `folder`."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\nif sys.argv[1:] != ['-L']:\n"
                      f"    sys.exit(9)\nprint({output!r}, end='')\nsys.exit({code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def no_smi_path(tmp_path, monkeypatch):
    """No CUDA_VISIBLE_DEVICES, and a PATH without any nvidia-smi (nor anything else)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return monkeypatch


# --- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("0,1,3", ["0", "1", "3"]), (" 2 ", ["2"]), ("", []), ("-1", []),
    ("0,-1,1", ["0"]),  # CUDA ignores the ids after an invalid one
    ("GPU-8e2f1a3c-aaaa,GPU-77", ["GPU-8e2f1a3c-aaaa", "GPU-77"]),
])
def test_cuda_visible_devices_is_what_is_found(monkeypatch, tmp_path, value, expected):
    # An nvidia-smi listing other GPUs is there too: the variable wins.
    smi = fake_nvidia_smi(tmp_path / "bin", "GPU 0: A (UUID: GPU-a)\nGPU 7: B (UUID: GPU-b)\n")
    monkeypatch.setenv("PATH", f"{smi}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert detect_gpus() == expected


def test_nvidia_smi_lines_are_parsed(no_smi_path, tmp_path):
    listing = ("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1b2c)\n"
               "  MIG 3g.40gb     Device  0: (UUID: MIG-9f8e)\n"
               "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-3d4e)\n"
               "GPU 2: NVIDIA A100-SXM4-80GB (UUID: GPU-5f6a)\n")
    smi = fake_nvidia_smi(tmp_path / "bin", listing)
    no_smi_path.setenv("PATH", f"{smi}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ["0", "1", "2"]


def test_failing_or_missing_nvidia_smi_means_no_gpu(no_smi_path, tmp_path):
    assert detect_gpus() == []  # not on PATH
    smi = fake_nvidia_smi(tmp_path / "bin", "NVIDIA-SMI has failed: no driver\n", code=9)
    no_smi_path.setenv("PATH", f"{smi}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == []


def test_detection_does_not_import_tensorflow():
    code = ("import sys; from sweep.devices import detect_gpus; detect_gpus(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


# --- the --gpus flag -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("0,1,2,3", ["0", "1", "2", "3"]), ("3", ["3"]), (" 1 , 0 ", ["1", "0"]),
    ("none", []), ("NONE", []), ("GPU-1b2c-3d,MIG-9f8e", ["GPU-1b2c-3d", "MIG-9f8e"]),
])
def test_parse_gpus(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "'' is not a GPU id"), ("0,,1", "'' is not a GPU id"), ("a,b", "'a' is not a GPU id"),
    ("-1", "'-1' is not a GPU id"), ("0 1", "'0 1' is not a GPU id"),
    ("0,1,0", "GPU 0 is listed twice"),
])
def test_bad_gpus_are_one_line_user_errors(text, fragment):
    with pytest.raises(UserError) as caught:
        parse_gpus(text)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


# --- worker slots --------------------------------------------------------------------------


def devices(slots):
    assert all(slot == {"CUDA_VISIBLE_DEVICES": slot["CUDA_VISIBLE_DEVICES"], **GROWTH}
               for slot in slots), slots
    return [slot["CUDA_VISIBLE_DEVICES"] for slot in slots]


def test_one_slot_per_gpu_by_default():
    assert devices(worker_slots(["0"], None)) == ["0"]
    assert devices(worker_slots(["0", "1"], None)) == ["0", "1"]
    assert devices(worker_slots(["0", "1", "2", "3"], None)) == ["0", "1", "2", "3"]
    assert devices(worker_slots(["GPU-a", "GPU-b"], None)) == ["GPU-a", "GPU-b"]


def test_gpus_per_trial_groups_devices():
    four = ["0", "1", "2", "3"]
    assert devices(worker_slots(four, None, gpus_per_trial=2)) == ["0,1", "2,3"]
    assert devices(worker_slots(four, None, gpus_per_trial=4)) == ["0,1,2,3"]
    assert devices(worker_slots(four, None, gpus_per_trial=3)) == ["0,1,2"]  # GPU 3 idle
    assert devices(worker_slots(["0", "1"], None, gpus_per_trial=2)) == ["0,1"]


def test_trials_per_gpu_shares_devices_round_robin():
    assert devices(worker_slots(["0"], None, trials_per_gpu=3)) == ["0", "0", "0"]
    assert devices(worker_slots(["0", "1"], None, trials_per_gpu=2)) == ["0", "1", "0", "1"]
    assert devices(worker_slots(["0", "1", "2", "3"], None, gpus_per_trial=2,
                                trials_per_gpu=2)) == ["0,1", "2,3", "0,1", "2,3"]


def test_fewer_workers_spread_over_the_gpus():
    assert devices(worker_slots(["0", "1"], 1, trials_per_gpu=2)) == ["0"]
    assert devices(worker_slots(["0", "1"], 2, trials_per_gpu=2)) == ["0", "1"]
    assert devices(worker_slots(["0", "1", "2", "3"], 3)) == ["0", "1", "2"]


def test_cpu_machine_gives_empty_slots():
    assert worker_slots([], None) == [{}]
    assert worker_slots([], 3) == [{}, {}, {}]
    assert worker_slots([], 1, gpus_per_trial=1, trials_per_gpu=1) == [{}]


@pytest.mark.parametrize("gpus, workers, per_trial, per_gpu, fragment", [
    (["0", "1"], 3, 1, 1, "--workers 3 is more than the 2 worker slot(s)"),
    (["0"], 2, 1, 1, "--workers 2 is more than the 1 worker slot(s)"),
    (["0", "1", "2", "3"], 3, 2, 1, "--workers 3 is more than the 2 worker slot(s)"),
    (["0", "1"], None, 3, 1, "--gpus-per-trial 3 is more than the 2 GPU(s)"),
    ([], None, 2, 1, "need GPUs"), ([], 2, 1, 2, "need GPUs"),
    (["0"], None, 0, 1, "at least 1"), (["0"], None, 1, 0, "at least 1"),
])
def test_impossible_slots_are_user_errors(gpus, workers, per_trial, per_gpu, fragment):
    with pytest.raises(UserError) as caught:
        worker_slots(gpus, workers, per_trial, per_gpu)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("args, fragment", [
    (["--gpus", "0,x"], "'x' is not a GPU id"),
    (["--gpus", "0", "--workers", "2"], "--workers 2 is more than"),
    (["--gpus-per-trial", "0"], "--gpus-per-trial must be at least 1"),
    (["--trials-per-gpu", "0"], "--trials-per-gpu must be at least 1"),
    (["--in-process", "--workers", "2"], "--in-process runs one trial at a time"),
])
def test_bad_device_flags_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                            args, fragment):
    experiment = write_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--experiment", str(experiment), "--trials", "1", *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # the error, after the warning line where --gpus names devices not found here
    assert fragment in errors[-1] and all(line.startswith("sweep: ") for line in errors), errors
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


# --- end to end ----------------------------------------------------------------------------


def test_each_trial_runs_on_its_own_slot(tmp_path, monkeypatch):
    """`--gpus 0,1 --workers 2` on a machine where no GPU is found: one warning line, and every
    trial's run is tagged with the device its process was given, both devices used.

    Needs the lead's wiring of `Sweep.run(..., slots=)` (sweep/runner.py: each trial process
    started with its slot's environment, `hardware.cuda_visible_devices` tagged); it fails
    until that lands."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # no GPU found here, even on a GPU host
    experiment = small_experiment(tmp_path)
    # Two trials per slot: each slot's second trial runs in a spare process started ahead,
    # which must get that slot's environment too.
    result = sweep_cli(tmp_path, "run", "--experiment", experiment, "--study", "check",
                       "--trials", "4", "--gpus", "0,1", "--workers", "2", timeout=900)
    assert result.returncode == 0, explain(result)
    warnings = [line for line in result.stderr.splitlines() if "no GPU found here" in line]
    assert len(warnings) == 1, explain(result)
    assert "sweep: 2 worker slot(s): GPU 0 | GPU 1" in result.stdout, explain(result)
    children = mlflow_runs(tmp_path).children
    assert len(children) == 4
    used = [run.data.tags.get("hardware.cuda_visible_devices") for run in children]
    assert set(used) == {"0", "1"}, used
