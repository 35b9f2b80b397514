"""Set up (private cache, data loaded once), run the rows, print the table."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.table import Row, failed_row, format_table, write_json


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def machine() -> dict:
    """The CPU, cores, memory, accelerators and load this run measured on."""
    import tensorflow as tf

    info = {"python": platform.python_version(), "tensorflow": tf.__version__,
            "cores": os.cpu_count(), "gpus": [d.name for d in tf.config.list_physical_devices(
                "GPU")], "load_average_at_start": os.getloadavg()}
    for path, key, field in (("/proc/cpuinfo", "cpu", "model name"),
                             ("/proc/meminfo", "memory", "MemTotal")):
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            info[key] = next(line.split(":", 1)[1].strip() for line in lines
                             if line.startswith(field))
        except (OSError, StopIteration):
            pass
    if "memory" in info:
        info["memory"] = f"{int(info['memory'].split()[0]) / 2**20:.0f} GiB"
    return info


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.cache_dir:
        os.environ["BERTCLF_CACHE_DIR"] = args.cache_dir
    scratch = Path(tempfile.mkdtemp(prefix="bench-scratch-"))
    try:
        return _run(args, scratch, started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, scratch: Path, started: float) -> int:
    from bench.context import FULL, QUICK, Context, bench_vocab, make_preprocessor
    from bench.rows import ROWS
    from bertclf.cache import cache_dir
    from bertclf.data.datasets import load_dataset
    from bertclf.encoders.map import get_encoder, install_builtins
    from bertclf.errors import UserError
    from bertclf.run.accel import xla_enabled
    from bertclf.run.config import Hardware

    wanted = args.rows.split(",") if args.rows else list(ROWS)
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        print(f"bench: unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)}",
              file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    info = machine()
    log(f"{'quick' if args.quick else 'full'} run on {info.get('cpu', '?')}, "
        f"{info['cores']} cores, load average {info['load_average_at_start'][0]:.1f}")
    try:
        loaded = time.perf_counter()
        # The archive is extracted into (or found in) the usual bertclf cache: not measured.
        dataset = load_dataset(args.data, max_examples=plan.examples)
    except UserError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if not args.cache_dir:
        # From here on a fresh cache: every token cache and built model starts empty.
        os.environ["BERTCLF_CACHE_DIR"] = str(scratch / "cache")  # trial processes inherit it
    log(f"data loaded in {time.perf_counter() - loaded:.0f}s; token cache in {cache_dir()}")
    tiny = get_encoder("tiny")
    install_builtins(tiny)  # builds the tiny model into the cache once
    vocab = bench_vocab()
    ctx = Context(plan=plan, data_path=Path(args.data).resolve(), dataset=dataset,
                  scratch=scratch, tiny=tiny, vocab=vocab,
                  preprocess=make_preprocessor(vocab, scratch / "preprocess"),
                  jit=xla_enabled(Hardware()))

    rows: list[Row] = []
    row_seconds: dict[str, float] = {}
    failures = 0
    for key in wanted:
        measure = ROWS[key]
        title = (measure.__doc__ or key).splitlines()[0].rstrip(".")
        log(f"row {title}")
        row_started = time.perf_counter()
        try:
            new_rows = measure(ctx)
        except Exception as e:  # one broken measurement must not hide the others
            traceback.print_exc()
            new_rows = [failed_row(f"{key}. {measure.__name__}", f"{type(e).__name__}: {e}")]
            failures += 1
        rows += new_rows
        row_seconds[key] = time.perf_counter() - row_started
        for row in new_rows:
            log(f"{row.name}: {' | '.join(row.cells()[1:])} "
                f"({time.perf_counter() - row_started:.0f}s)")

    seconds = time.perf_counter() - started
    info["load_average_at_end"] = os.getloadavg()
    print()
    print(f"{'quick' if args.quick else 'full'} benchmark, {info.get('cpu', '?')}, "
          f"{info['cores']} cores, {info.get('memory', '?')}, "
          f"GPU: {', '.join(info['gpus']) or 'none'}, TF {info['tensorflow']}; "
          f"load average {info['load_average_at_start'][0]:.1f} at start, "
          f"{info['load_average_at_end'][0]:.1f} at end; {seconds / 60:.1f} min")
    print(format_table(rows))
    if args.json:
        write_json(args.json, rows, {"mode": "quick" if args.quick else "full",
                                     "machine": info, "seconds": seconds,
                                     "row_seconds": row_seconds})
    return 1 if failures else 0  # a missed target is in the table, not the exit status
