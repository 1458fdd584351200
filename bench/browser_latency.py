"""Monitor latency and page loads in a real browser, with the dashboard under load.

    .venv/bin/python bench/browser_latency.py [--sessions 3] [--lines 5] [--runs 50] [--log-gb 1] [--fresh-only]

First, on the freshly started server, a new tab opens the Train page (the first request the server sees), then
`--fresh` more tabs do the same one after another: each is timed until the form and its memory plan are drawn and
the script is idle, and every change to the sidebar's page menu is recorded from the first paint, so a flash of
Streamlit's own page list ("streamlit app / chat / data ...") before ours is reported. Then (unless --fresh-only):
starts the dashboard as run_app.sh does (`python -m app.serve`) on a free port with a private runs folder holding
`--runs` finished runs and one live run whose train.log is `--log-gb` GB. `--sessions` Chromium sessions open the
Monitor page on the live run; this script then appends metric lines as the trainer does (metrics.jsonl + status.json)
and prints how long each line takes to show in every session, without reloading. Then it times opening each page.
Needs Chromium on PATH (Debian: apt-get install chromium). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from dashboard_load import make_runs  # noqa: E402  (same fixture data as the server-side load bench)
from nav_recorder import NAV_RECORDER  # noqa: E402
from trainer_core.runs.launch import free_port  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TOTAL = 1000
TRAIN_DRAWN = ".st-key-train-memory"  # the memory plan: the last part of the Train page to fill in
FORM_DRAWN = ".st-key-p-f-run-name"  # the form's first field
SAMPLE = PROJECT_ROOT / "data" / "sample_zhenhuan.jsonl"  # the form's data file: touched to make the checks run again


def make_live(run: Path) -> None:
    """Turn a finished run into a live one: this process stands in for its supervisor."""
    from trainer_core.runs import protocol

    me = psutil.Process()
    protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": me.pid, "pgid": os.getpgid(me.pid),
                                             "create_time": me.create_time(), "started": time.time()})
    with open(run / protocol.METRICS, "w") as f:
        f.write(json.dumps(row(1)) + "\n")
    protocol.update_status(run, state=protocol.RUNNING, step=1, total_steps=TOTAL, loss=12.0, eta_s=999.0)


def row(step: int) -> dict:
    return {"step": step, "total_steps": TOTAL, "loss": 12 - step * 0.001, "lr": 1e-4, "grad_norm": 1.0,
            "tokens_per_s": 800.0, "label_tokens_per_s": 300.0, "elapsed_s": step * 1.0, "eta_s": TOTAL - step,
            "peak_mem_bytes": [2**30], "time": time.time()}


def write_step(run: Path, step: int) -> float:
    from trainer_core.runs import protocol

    with open(run / protocol.METRICS, "a") as f:
        f.write(json.dumps(row(step)) + "\n")
    protocol.update_status(run, step=step, loss=row(step)["loss"])
    return time.perf_counter()


def fresh_train_tab(browser, url: str) -> tuple[float, float, list[str]]:
    """A new browser context (no session, no cache) opening /train: seconds until the form is there (its first
    field drawn), seconds until the whole page with its memory plan is drawn and the script is idle, and every page
    menu the sidebar showed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(NAV_RECORDER)
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(f"{url}/train")
    page.wait_for_selector(FORM_DRAWN, timeout=120_000)
    title = time.perf_counter() - t0
    page.wait_for_selector(TRAIN_DRAWN, timeout=120_000)
    page.wait_for_timeout(50)
    page.wait_for_selector(IDLE, state="attached", timeout=120_000)
    drawn = time.perf_counter() - t0
    navs = page.evaluate("window.__navSeen")
    context.close()
    return title, drawn, navs


def report_fresh(browser, url: str, n: int) -> None:
    form, drawn, navs = fresh_train_tab(browser, url)
    print(f"first tab of a fresh server on /train: form {form:.2f} s, whole page with the memory plan {drawn:.2f} s; "
          f"page menus shown: {navs}")
    for label, touch in (("server warm", False), ("data file just changed, so the checks run again", True)):
        times = []
        for _ in range(n):
            if touch:
                os.utime(SAMPLE)
            times.append(fresh_train_tab(browser, url))
        flashes = [nav for _, _, navs in times for nav in navs if "streamlit app" in nav.lower()]
        print(f"fresh tab on /train ({label}), {n} tabs one after another: form median "
              f"{statistics.median(x[0] for x in times):.2f} s, whole page with the memory plan median "
              f"{statistics.median(x[1] for x in times):.2f} s, max {max(x[1] for x in times):.2f} s; "
              f"Streamlit's own page list shown in {len(flashes)} of {n}")


def report_monitor(browser, url: str, live: Path, args) -> None:
    """Metric line written -> visible on every open Monitor tab; then page switches."""
    pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(args.sessions)]
    for page in pages:
        page.goto(f"{url}/monitor")
    for page in pages:
        page.wait_for_selector(".st-key-mon-progress", timeout=120_000)
    print(f"{args.runs} runs in history, live run with a {args.log_gb:g} GB train.log, "
          f"{args.sessions} browser sessions on its Monitor page")
    latencies: list[float] = []
    for i in range(args.lines):
        step = 10 * (i + 1)
        t0 = write_step(live, step)
        pending = set(range(len(pages)))
        while pending and time.perf_counter() - t0 < 30:
            for k in list(pending):
                if f"{step} / {TOTAL}" in pages[k].locator(".st-key-mon-progress").inner_text():
                    latencies.append(time.perf_counter() - t0)
                    pending.discard(k)
            time.sleep(0.02)
        latencies += [float("inf")] * len(pending)
        time.sleep(1.3)  # let each line stand before the next, as with a real logging interval
    finite = [x for x in latencies if x != float("inf")]
    print(f"metric line -> visible in the Monitor page: median {statistics.median(finite):.2f} s, "
          f"max {max(latencies):.2f} s over {len(latencies)} (line, session) pairs")
    report_switches(pages[0])


def report_switches(page) -> None:
    links = page.locator('[data-testid="stSidebarNav"] a')
    for i, label in enumerate(("Data", "Train", "Monitor", "Chat", "Runs")):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            links.nth(i).click()
            page.wait_for_timeout(50)
            page.wait_for_selector(IDLE, state="attached", timeout=60_000)
            times.append(time.perf_counter() - t0)
        print(f"switch to {label:<8} page rendered in {statistics.median(times):.2f} s (median of 3)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--lines", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--log-gb", type=float, default=1.0)
    ap.add_argument("--fresh", type=int, default=5, help="fresh tabs opened on the Train page")
    ap.add_argument("--fresh-only", action="store_true", help="only the fresh-tab figures")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Chromium on PATH (apt-get install chromium)")
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        live = make_runs(Path(tmp), args.runs, args.log_gb)
        make_live(live)
        port = free_port()
        env = dict(os.environ, TRAINER_RUNS_ROOT=tmp)
        server = subprocess.Popen([sys.executable, "-m", "app.serve", "--server.port", str(port)], cwd=PROJECT_ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
                report_fresh(browser, url, args.fresh)
                if not args.fresh_only:
                    report_monitor(browser, url, live, args)
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
