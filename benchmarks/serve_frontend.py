"""The serving front end's own cost: `cifar-deploy serve`'s application with inference replaced by
zeros, driven by perf_analyzer, so that what is measured is HTTP/gRPC handling, validation,
batching and the hand-off to the worker thread, not the model. For each checkout given (this
one, and e.g. an older one in a git worktree, run with this venv), alternating rounds:
requests/s and the server process's CPU milliseconds per request (from /proc, over the rows its
batcher saw). Loopback only; every server started is stopped.

    python benchmarks/serve_frontend.py exports/cnn/cnn_int8.tflite --roots .,/tmp/before
        [--concurrency 8,32] [--protocol http|grpc] [--rounds 2] [--peers /tmp/peers-env]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_peers import cpu_name, free_port, run_perf_analyzer, stop, wait_ready  # noqa: E402

# The server of the checkout at argv[1] (this venv's editable install's finder dropped first),
# its predictor's predict replaced by zeros.
SERVER = """
import sys
sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]
root, artifact, port, grpc_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
import numpy as np, uvicorn
import cifar_deploy
assert cifar_deploy.__file__.startswith(root), cifar_deploy.__file__
from cifar_deploy.serving.limits import uvicorn_config
try:
    from cifar_deploy.runtime.predictors import load_predictor
    from cifar_deploy.serving.server import build_server_app
except ImportError:  # a checkout from before the serving package's split (issue #25)
    from cifar_deploy.serving.runtimes import load_predictor
    from cifar_deploy.serving.server import create_app as build_server_app
predictor = load_predictor(artifact, threads=1)
predictor.predict = lambda x, batch_size=256: np.zeros((len(x), 10), np.float32)
app = build_server_app(predictor, name="cnn", grpc_port=grpc_port)
uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, log_level="warning")).run()
"""

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rows_served(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"cifar_batch_size_sum\{[^}]*\} ([0-9.e+]+)", text))


def measure(args, root: Path, concurrency: int, work: Path) -> dict:
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-c", SERVER, str(root.resolve()), str(args.artifact)]
    proc = subprocess.Popen(
        [*cmd, str(port), str(grpc_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(port, proc, f"the server of {root}")
        target = port if args.protocol == "http" else grpc_port
        rows0, cpu0 = rows_served(port), cpu_seconds(proc.pid)
        try:
            row = run_perf_analyzer(
                args.peers / "pa/perf_analyzer",
                f"127.0.0.1:{target}",
                args.protocol,
                concurrency,
                work / "pa.csv",
                measure_ms=args.measure_ms,
                trials=4,
            )
        except RuntimeError as exc:
            return {"error": str(exc).splitlines()}
        cpu1, rows1 = cpu_seconds(proc.pid), rows_served(port)
        return {
            "requests_per_s": float(row["Inferences/Second"]),
            "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / max(rows1 - rows0, 1),
            "requests": rows1 - rows0,
        }
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--roots", default=".", help="comma-separated checkouts")
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure-ms", type=int, default=3000)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers-env"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if not (args.peers / "pa/perf_analyzer").exists():
        raise SystemExit(f"no perf_analyzer under {args.peers}: run bash ../shared/peers/setup.sh")
    roots = [Path(r) for r in args.roots.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for root in roots if r % 2 == 0 else roots[::-1]:
                for c in levels:
                    figures = measure(args, root, c, Path(tmp))
                    results.append({"round": r + 1, "root": str(root), "concurrency": c, **figures})
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(
        f"\n{cpu_name()}, {os.cpu_count()} cores; inference stubbed; perf_analyzer over "
        f"{args.protocol}, single-image binary requests; {args.rounds} rounds (min-max)\n"
    )
    print("| checkout | concurrency | requests/s | server CPU ms per request |")
    print("| --- | ---: | ---: | ---: |")
    for root in roots:
        for c in levels:
            ok = [
                x
                for x in results
                if x["root"] == str(root) and x["concurrency"] == c and "error" not in x
            ]
            if not ok:
                print(f"| {root} | {c} | failed | - |")
                continue
            rps = [x["requests_per_s"] for x in ok]
            ms = [x["cpu_ms_per_request"] for x in ok]
            print(
                f"| {root} | {c} | {min(rps):,.0f}-{max(rps):,.0f} | {min(ms):.3f}-{max(ms):.3f} |"
            )
    if args.json_out:
        args.json_out.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
