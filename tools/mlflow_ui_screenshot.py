"""Screenshot a sweep study's MLflow UI: the chart view, parent run expanded (docs/mlflow-ui.png).

    python -m sweep run --trials 4 --experiment experiments/quick.toml --study quick   # in DIR
    python tools/mlflow_ui_screenshot.py DIR docs/mlflow-ui.png

DIR is the folder the sweep ran in (its mlflow.db and mlruns/). The script starts
`mlflow server` on a free port, opens the experiment's Model-training page in headless
Chromium, expands the parent run, switches to the chart view, keeps the charts whose name
holds --metric (made taller so every legend entry shows), saves the PNG and stops the
server. Needs `pip install playwright` and a Chromium binary (Debian: `apt-get install
chromium`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Keep MLflow's assistant side panel from opening over the page on a fresh profile.
NO_ASSISTANT = """
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
"""


def experiment_id(db: Path, name: str | None) -> str:
    """The named experiment, else the one holding the most recently started run."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        if name:
            row = con.execute("SELECT experiment_id FROM experiments WHERE name = ?",
                              (name,)).fetchone()
        else:
            row = con.execute("SELECT experiment_id FROM runs ORDER BY start_time DESC"
                              " LIMIT 1").fetchone()
    if row is None:
        sys.exit(f"no experiment {name!r} in {db}" if name else f"no runs in {db}")
    return str(row[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{study / 'mlflow.db'}",
           "--default-artifact-root", str(study / "mlruns"),
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(cmd, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return server
        except OSError:
            if server.poll() is not None:
                sys.exit(f"mlflow server exited with status {server.returncode}")
            time.sleep(2)
    stop_server(server)
    sys.exit("mlflow server did not answer /health within 180 s")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server and its workers (their own process group, started above)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def screenshot(url: str, out: Path, args: argparse.Namespace) -> None:
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": args.width, "height": args.height})
        try:
            page = browser.new_page()
            page.add_init_script(NO_ASSISTANT)
            page.goto(url)
            # Runs table: the "+" beside a parent run's name expands it.
            page.locator("button[data-component-id*=runnamecellrenderer]").first.click(
                timeout=120_000)
            page.get_by_text("trial-0", exact=True).first.wait_for()
            page.locator("label:has(input[value=CHART])").click()  # chart view
            page.get_by_placeholder("Search metric charts").fill(args.metric)
            card = page.locator("[data-testid=experiment-view-compare-runs-card]").filter(
                has=page.get_by_text(args.metric, exact=True))
            card.wait_for()
            # Drag the card's bottom-right resize handle: taller, so the legend fits.
            box = card.bounding_box()
            page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] - 4)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] + 150, box["y"] + box["height"] + 100,
                            steps=10)
            page.mouse.move(args.width - 52, args.height - 70, steps=10)
            page.mouse.up()
            page.mouse.move(args.width / 2, args.height - 20)  # no hover highlight
            page.wait_for_timeout(3000)  # let the charts redraw
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="folder the sweep ran in (mlflow.db, mlruns/)")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--experiment", help="experiment name (default: the latest run's)")
    ap.add_argument("--metric", default="val_accuracy", help="charts to keep (name filter)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    study = args.study.resolve()
    if not (study / "mlflow.db").is_file():
        sys.exit(f"{study / 'mlflow.db'} not found")
    exp = experiment_id(study / "mlflow.db", args.experiment)
    port = free_port()
    server = start_server(study, port)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}/#/experiments/{exp}?workflowType=machine_learning"
        screenshot(url, args.out, args)
    finally:
        stop_server(server)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB) from {url}")


if __name__ == "__main__":
    main()
