# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The demo page under load, as outside users would drive it: start ``app.py`` on a port of this machine (loopback
only), send N requests at once through ``gradio_client``, and sort what each got: an answer, "busy" (the bounded
queue refused it and said to retry), a message on the page (``gr.Error``), or any other failure.
``bench/bench_app.py`` prints the figures; ``tests/test_app.py`` holds the page to them on a tiny pipeline.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("answered", "busy", "message", "failed")


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(pipeline: str | os.PathLike, port: int, log_path: Path, extra: list[str] = (), timeout: float = 180.0) -> subprocess.Popen:
    """``python app.py`` serving ``pipeline`` on 127.0.0.1:``port``; returns once the page answers (or raises with the
    end of its log)."""
    log = open(log_path, "w")  # noqa: SIM115 (the server writes to it for its whole life)
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--pipeline", str(pipeline), "--host", "127.0.0.1",
                               "--port", str(port), *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError("app.py did not serve: " + log_path.read_text()[-3000:]) from None
            time.sleep(0.5)


def page_inputs(uses_layouts: bool, label: str, guidance: float, steps: int, images: int, seed: int,
                max_objects: int, none: str) -> list:
    """The page's inputs for one object ``label`` (the other ``max_objects - 1`` slots ``none``), layouts drawn from
    the prior."""
    colour, shape = label.split()
    slots = [colour, shape] + [none, none] * (max_objects - 1)
    placement = [False] + [0.5, 0.5, "large"] * max_objects if uses_layouts else []
    return [*slots, *placement, guidance, steps, images, seed]


def one_request(url: str, inputs: list) -> dict:
    """One client's request and what it got, with its latency."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        client.predict(*inputs, api_name="/generate")
        outcome, message = "answered", ""
    except QueueError as error:
        outcome, message = "busy", str(error)
    except AppError as error:
        outcome, message = "message", str(error)
    except Exception as error:  # noqa: BLE001 (anything else is what the load test is looking for)
        outcome, message = "failed", f"{type(error).__name__}: {error}"
    return {"outcome": outcome, "message": message, "seconds": time.perf_counter() - start}


def drive(url: str, clients: int, inputs: list, timeout: float = 600.0) -> list[dict]:
    """``clients`` requests sent at once, each from its own client (thread); their outcomes in order."""
    results: list[dict | None] = [None] * clients

    def run(i: int) -> None:
        results[i] = one_request(url, [*inputs[:-1], inputs[-1] + i])  # each its own seed

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return [r or {"outcome": "failed", "message": "no answer in time", "seconds": timeout} for r in results]


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summarise(results: list[dict]) -> dict:
    """Counts per outcome, and p50 / p95 latency of the answered requests."""
    answered = sorted(r["seconds"] for r in results if r["outcome"] == "answered")

    def percentile(q: float) -> float:
        return answered[min(len(answered) - 1, round(q * (len(answered) - 1)))] if answered else float("nan")

    counts = {outcome: sum(r["outcome"] == outcome for r in results) for outcome in OUTCOMES}
    return {"clients": len(results), **counts, "p50_seconds": percentile(0.5), "p95_seconds": percentile(0.95),
            "median_busy_seconds": statistics.median([r["seconds"] for r in results if r["outcome"] == "busy"] or [float("nan")])}
