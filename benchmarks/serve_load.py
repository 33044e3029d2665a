"""Bounded load test of `cifar-deploy serve` on loopback (issue-6 and issue-13 figures, not tests).

For each artifact: requests/s and p50/p99 latency at several concurrency levels (single-image
requests, binary tensors, closed loop: each client sends its next request when the last returns),
the server's mean merged batch, the in-process predictor's throughput at that batch size, and the
server's resident memory after 1,000 and after 10,000 requests. Then the naive baseline
(benchmarks/naive_server.py: one Keras model.predict per request) at the highest concurrency.

The load comes from Triton's C++ load generator, perf_analyzer, when ``--peers`` holds it
(``bash ../shared/peers/setup.sh``); otherwise, and for the counted memory and naive-server
phases, from a Python client (threads with requests.Session), which needs more CPU per request
and so reads lower on a small machine that it shares with the server. Traffic goes to 127.0.0.1
only, in bounded request counts or time windows.

    python benchmarks/serve_load.py --exports exports/cnn [--concurrency 1,8,32] [--requests 2000]
        [--peers /tmp/peers-env] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy.checks.bench import input_pool, time_runs  # noqa: E402
from cifar_deploy.export.metadata import read_sidecar  # noqa: E402
from cifar_deploy.runtime import load_predictor  # noqa: E402
from cifar_deploy.runtime.artifacts import resolve_reference  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_peers import cpu_name, run_perf_analyzer  # noqa: E402


def header(batch: int) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [batch, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": batch * 3072},
                }
            ]
        }
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not start: {cmd}")


def load(port: int, model: str, total: int, concurrency: int, batch: int = 1) -> dict:
    """Closed-loop load: ``concurrency`` clients, ``total`` requests of ``batch`` images each;
    latencies in ms."""
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    head = header(batch)
    pool = [head + x.tobytes() for x in input_pool(batch, seed=7)]
    headers = {"Inference-Header-Content-Length": str(len(head))}
    per_client = total // concurrency

    def client(c: int) -> list[float]:
        session, latencies = requests.Session(), []
        for i in range(per_client):
            start_ns = time.perf_counter_ns()
            r = session.post(url, data=pool[(c + i) % len(pool)], headers=headers, timeout=60)
            latencies.append((time.perf_counter_ns() - start_ns) / 1e6)
            if r.status_code != 200:
                raise RuntimeError(r.text)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        lat = np.concatenate([np.asarray(v) for v in ex.map(client, range(concurrency))])
    seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "request_batch": batch,
        "driver": "python",
        "requests": int(lat.size),
        "req_s": lat.size / seconds,
        "img_s": lat.size * batch / seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def load_perf_analyzer(
    perf_analyzer: Path, port: int, model: str, concurrency: int, batch: int = 1, floats=False
) -> dict:
    """perf_analyzer's closed loop at ``concurrency``, ``batch`` images per request, three stable
    5 s windows; latencies in ms. ``floats``: the model's input is FP32 (perf_analyzer wants
    the data file's numbers written as floats then)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Real pixel values 0..255 (random bytes read as FP32 would include NaN, which the
        # server rightly refuses), 16 different images in turn.
        images = input_pool(1, seed=7)[:16]
        kind = float if floats else int
        data = [
            {"images": {"content": [kind(v) for v in x.reshape(-1)], "shape": [32, 32, 3]}}
            for x in images
        ]
        (Path(tmp) / "data.json").write_text(json.dumps({"data": data}))
        row = run_perf_analyzer(
            perf_analyzer,
            f"127.0.0.1:{port}",
            "http",
            concurrency,
            Path(tmp) / "pa.csv",
            data=("--input-data", str(Path(tmp) / "data.json")),
            trials=6,
            batch=batch,
            model=model,
        )
    img_s = float(row["Inferences/Second"])  # perf_analyzer counts images (batch x requests)
    return {
        "concurrency": concurrency,
        "request_batch": batch,
        "driver": "perf_analyzer",
        "req_s": img_s / batch,
        "img_s": img_s,
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def batch_totals(port: int) -> tuple[float, float]:
    """(rows, inference calls) so far, from the server's batch-size histogram (all models)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    number = r"(?:\{[^}]*\})? ([0-9.e+]+)"
    rows = sum(float(v) for v in re.findall(r"cifar_batch_size_sum" + number, text))
    calls = sum(float(v) for v in re.findall(r"cifar_batch_size_count" + number, text))
    return rows, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", default="exports/cnn")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=2000, help="per level (Python client)")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers-env"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    exports = Path(args.exports)
    name = exports.name
    levels = [int(c) for c in args.concurrency.split(",")]
    pa = args.peers / "pa/perf_analyzer"
    if pa.exists():
        driver = "perf_analyzer"

        def drive(port, level, batch=1):
            floats = read_sidecar(artifact).input.dtype == "float32"
            return load_perf_analyzer(pa, port, name, level, batch, floats)
    else:
        driver = "python client (no perf_analyzer under --peers)"

        def drive(port, level, batch=1):
            count = args.requests if batch == 1 else max(args.requests // 8, 64)
            return load(port, name, count, level, batch)

    print(f"load generator: {driver}", file=sys.stderr)
    cli = [sys.executable, "-m", "cifar_deploy.cli", "serve"]
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "driver": driver, "artifacts": {}}
    for artifact in (exports / f"{name}_int8.tflite", exports / f"{name}_float32.onnx"):
        port = free_port()
        proc = start(cli + [str(artifact), "--port", str(port), "--name", name], port)
        server = psutil.Process(proc.pid)
        rows = []
        try:
            load(port, name, 200, 8)  # warm-up
            for level in levels:
                rows0, calls0 = batch_totals(port)
                row = drive(port, level)
                rows1, calls1 = batch_totals(port)
                row["mean_batch"] = (rows1 - rows0) / max(calls1 - calls0, 1)
                rows.append(row)
            # Requests that carry 32 images each: per-request HTTP cost spread over the batch.
            big = drive(port, 4, batch=32)
            # Memory: after 1,000 requests, then after 10,000 (9,000 more).
            load(port, name, 1000, 32)
            rss_1k = server.memory_info().rss / 2**20
            load(port, name, 9000, 32)
            rss_10k = server.memory_info().rss / 2**20
            batch = max(1, round(rows[-1]["mean_batch"]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        predictor = load_predictor(artifact)
        ms = float(np.median(time_runs(predictor.predict, input_pool(batch), 5, 2.0, 20)))
        ms32 = float(np.median(time_runs(predictor.predict, input_pool(32), 5, 2.0, 20)))
        results["artifacts"][artifact.name] = {
            "levels": rows,
            "server_mean_batch": batch,
            "in_process_img_s_at_that_batch": batch * 1000 / ms,
            "served_share_of_in_process": rows[-1]["img_s"] / (batch * 1000 / ms),
            "batch32_requests": big,
            "in_process_img_s_at_32": 32 * 1000 / ms32,
            "batch32_served_share": big["img_s"] / (32 * 1000 / ms32),
            "rss_mb_after_1k": rss_1k,
            "rss_mb_after_10k": rss_10k,
            "rss_growth": rss_10k / rss_1k - 1,
        }
        print(json.dumps({artifact.name: results["artifacts"][artifact.name]}), file=sys.stderr)
    # The naive server, one model.predict per request, at the highest concurrency.
    metadata = read_sidecar(exports / f"{name}_float32.onnx")
    reference = resolve_reference({exports / f"{name}_float32.onnx": metadata}, None)
    port = free_port()
    naive_script = str(Path(__file__).with_name("naive_server.py"))
    proc = start([sys.executable, naive_script, str(reference), str(port)], port)
    try:
        load(port, name, 50, 8)
        naive = load(port, name, min(args.requests, 500), levels[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results["naive_model_predict_server"] = naive
    for r in results["artifacts"].values():
        r["speedup_vs_naive"] = r["levels"][-1]["req_s"] / naive["req_s"]
    print(json.dumps(results, indent=2), file=sys.stderr)
    print_table(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    print(f"\n{results['cpu']}, {results['cores']} cores; load: {results['driver']}\n")
    print("| artifact | clients | requests/s | p50 ms | p99 ms | mean merged batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for artifact, r in results["artifacts"].items():
        for row in r["levels"]:
            print(
                f"| {artifact} | {row['concurrency']} | {row['req_s']:,.0f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['mean_batch']:.1f} |"
            )
        big = r["batch32_requests"]
        print(
            f"| {artifact} | 4, 32 images per request | {big['req_s']:,.0f} "
            f"({big['img_s']:,.0f} img/s) | {big['p50_ms']:.1f} | {big['p99_ms']:.1f} | - |"
        )
    naive = results["naive_model_predict_server"]
    print(
        f"| naive server (Keras `model.predict` per request) | {naive['concurrency']} | "
        f"{naive['req_s']:,.1f} | {naive['p50_ms']:,.0f} | {naive['p99_ms']:,.0f} | - |"
    )
    print()
    for artifact, r in results["artifacts"].items():
        print(
            f"{artifact}: single-image requests served "
            f"{r['levels'][-1]['img_s']:,.0f} img/s vs {r['in_process_img_s_at_that_batch']:,.0f}"
            f" in process at the merged batch {r['server_mean_batch']} "
            f"({r['served_share_of_in_process']:.0%}); 32-image requests "
            f"{r['batch32_requests']['img_s']:,.0f} vs {r['in_process_img_s_at_32']:,.0f} "
            f"({r['batch32_served_share']:.0%}); {r['speedup_vs_naive']:.0f}x the naive server; "
            f"memory {r['rss_mb_after_1k']:.1f} -> {r['rss_mb_after_10k']:.1f} MB "
            f"({r['rss_growth']:+.2%})"
        )


if __name__ == "__main__":
    main()
