"""GPUs for trial processes: which this machine has (found without importing TensorFlow), the
`--gpus` list, and the worker slots they give, one environment per slot; and the CPU's name."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

from bertclf.errors import UserError

GPU_LINE = re.compile(r"^GPU (\d+):")  # `nvidia-smi -L`: "GPU 0: NVIDIA H100 (UUID: GPU-...)"
GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")  # an index or a device UUID
# Without growth, TensorFlow reserves nearly all of a GPU's memory at its first op, so a
# second trial on the same GPU (--trials-per-gpu 2) could not start.
GROWTH = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (platform's guess elsewhere)."""
    try:
        lines = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), platform.processor() or "unknown CPU")


def detect_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set ("" or -1: none; the ids
    before the first negative one, as CUDA reads it), else `nvidia-smi -L`'s, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:  # e.g. the tool is there but no driver is loaded
        return []
    return [m.group(1) for m in map(GPU_LINE.match, listed.stdout.splitlines()) if m]


def parse_gpus(text: str) -> list[str]:
    """The `--gpus` value: device ids separated by commas (`0,1,2,3`, or UUIDs), or `none`."""
    if text.strip().lower() == "none":
        return []
    ids = [entry.strip() for entry in text.split(",")]
    bad = [entry for entry in ids if not GPU_ID.match(entry)]
    if bad:
        raise UserError(f"--gpus: {bad[0]!r} is not a GPU id (expected e.g. 0,1,2,3 or none)")
    repeated = sorted({entry for entry in ids if ids.count(entry) > 1})
    if repeated:
        raise UserError(f"--gpus: GPU {repeated[0]} is listed twice (use --trials-per-gpu "
                        "to run several trials on one GPU)")
    return ids


def worker_slots(gpus: list[str], workers: int | None, gpus_per_trial: int = 1,
                 trials_per_gpu: int = 1) -> list[dict[str, str]]:
    """One environment per worker slot: each slot owns `gpus_per_trial` of `gpus` (left-over
    GPUs stay idle), each GPU group serves `trials_per_gpu` slots, and slots go round the
    groups so that fewer workers still spread over the GPUs. `workers` None: every slot.
    No GPUs: `workers` (default 1) empty environments. More workers than slots is a UserError:
    two trials sharing a GPU must be asked for (--trials-per-gpu)."""
    if gpus_per_trial < 1 or trials_per_gpu < 1:
        raise UserError("--gpus-per-trial and --trials-per-gpu must be at least 1")
    if not gpus:
        if gpus_per_trial > 1 or trials_per_gpu > 1:
            raise UserError("--gpus-per-trial and --trials-per-gpu need GPUs, and none was "
                            "found here (name them with --gpus)")
        return [{} for _ in range(workers or 1)]
    if gpus_per_trial > len(gpus):
        raise UserError(f"--gpus-per-trial {gpus_per_trial} is more than the {len(gpus)} "
                        f"GPU(s) given ({','.join(gpus)})")
    groups = [gpus[start:start + gpus_per_trial]
              for start in range(0, len(gpus) - gpus_per_trial + 1, gpus_per_trial)]
    slots = [{"CUDA_VISIBLE_DEVICES": ",".join(group), **GROWTH}
             for _ in range(trials_per_gpu) for group in groups]
    if workers is None:
        return slots
    if workers > len(slots):
        raise UserError(f"--workers {workers} is more than the {len(slots)} worker slot(s) "
                        f"GPU(s) {','.join(gpus)} give ({gpus_per_trial} GPU(s) per trial, "
                        f"{trials_per_gpu} trial(s) per GPU); lower --workers or raise "
                        "--trials-per-gpu")
    return slots[:workers]


def describe_slots(slots: list[dict[str, str]]) -> str:
    """The slots on one line: `2 worker slot(s): GPU 0 | GPU 1` or `1 worker slot(s), CPU`."""
    devices = [slot.get("CUDA_VISIBLE_DEVICES") for slot in slots]
    if not any(devices):
        return f"{len(slots)} worker slot(s), no GPU assigned"
    return f"{len(slots)} worker slot(s): " + " | ".join(f"GPU {d}" for d in devices)
