# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The demo page under load: start app.py on a port of this machine, send N requests at once through gradio_client
(N = 1, 8, 32 by default), and print p50 / p95 latency, how many were answered, told "busy" (the bounded queue), shown
a message or failed otherwise, and the server's memory before and after.

    python bench/bench_app.py --pipeline pretrained/iclevr-ddpm --clients 1,8,32

Traffic goes to 127.0.0.1 only; every request is bounded in time, and the server is stopped at the end.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import MAX_OBJECTS, NONE, SHIPPED_PIPELINE  # noqa: E402 (the page's own constants)
from iclevr.argtypes import positive_int  # noqa: E402
from iclevr.demo_load import drive, free_port, page_inputs, rss_mb, start_app, summarise  # noqa: E402
from iclevr.flags import int_list  # noqa: E402
from iclevr.utils import hardware_line  # noqa: E402
from pipeline_iclevr import ICLEVRPipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=str, default=str(SHIPPED_PIPELINE), help="Pipeline the page serves (default: the shipped one).")
    parser.add_argument("--clients", type=int_list, default=[1, 8, 32], help="Numbers of clients sent at once, one round each.")
    parser.add_argument("--images", type=positive_int, default=4, help="Images per request (the page's default).")
    parser.add_argument("--max_queue", type=positive_int, default=16, help="The page's --max_queue (its default).")
    parser.add_argument("--concurrency_limit", type=positive_int, default=1, help="The page's --concurrency_limit (its default).")
    args = parser.parse_args()
    print(hardware_line())
    pipe = ICLEVRPipeline.from_pretrained(args.pipeline)
    inputs = page_inputs(pipe.uses_layouts, "red sphere", pipe.config.default_guidance_scale,
                         pipe.config.default_num_inference_steps, args.images, 0, MAX_OBJECTS, NONE)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_app(args.pipeline, port, Path(tmp) / "server.log",
                           ["--max_queue", str(args.max_queue), "--concurrency_limit", str(args.concurrency_limit)])
        try:
            url = f"http://127.0.0.1:{port}/"
            drive(url, 1, inputs)  # warm-up: the first call loads kernels
            print(f"max_queue {args.max_queue}, concurrency {args.concurrency_limit}, {args.images} images per request")
            print(f"{'clients':>7} {'answered':>8} {'busy':>5} {'message':>7} {'failed':>6} {'p50 s':>7} {'p95 s':>7} "
                  f"{'busy s':>7} {'RSS before':>10} {'after MB':>9}")
            for clients in args.clients:
                before = rss_mb(server.pid)
                s = summarise(drive(url, clients, inputs))
                print(f"{clients:>7} {s['answered']:>8} {s['busy']:>5} {s['message']:>7} {s['failed']:>6} {s['p50_seconds']:>7.1f} "
                      f"{s['p95_seconds']:>7.1f} {s['median_busy_seconds']:>7.2f} {before:>10.0f} {rss_mb(server.pid):>9.0f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
