"""`cifar-deploy serve` side by side with real Triton and KServe, driven by Triton's perf_analyzer.

Same model in every server (a TFLite artifact under LiteRT with the same thread count), the same
dynamic-batching settings where the server has them (Triton: python backend with
``max_queue_delay_microseconds``; KServe has none), single-image requests with binary tensors,
closed loop at each concurrency. All servers are started at once and stay up; at each
concurrency they are measured back to back (the others idle), the order alternating between
rounds, so that each comparison is between measurements seconds apart on this VM, whose speed
drifts. The first server's throughput over each other's is printed round by round. Triton serves the
repository ``export --format triton-python`` writes, holding the same TFLite file.
perf_analyzer's own requests/s and p50/p99 latencies are quoted. The peers come from
``bash ../shared/peers/setup.sh`` (default ``/tmp/peers-env``); everything stays on 127.0.0.1
and every server started is stopped.

    python benchmarks/serve_peers.py exports/cnn/cnn_int8.tflite [--peers /tmp/peers-env]
        [--concurrency 1,8,32] [--rounds 2] [--measure-ms 5000] [--protocol http|grpc]
        [--servers cifar-deploy,triton,kserve] [--json-out FILE]

A server written ``NAME:xN`` runs as N processes sharing ``--threads``: ``cifar-deploy:x2`` is
``serve --workers 2 --threads 1``, ``triton:x2`` an ``instance_group`` of count 2 with one LiteRT
thread each, so both sides get the same processes and threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
MODEL = "cnn"

# A KServe ModelServer with the same LiteRT model (KServe has no dynamic batching). perf_analyzer
# first asks for Triton's model configuration, which KServe does not serve; the script adds that
# one read-only answer (REST GET .../config and the gRPC ModelConfig method, describing the
# model's input and output, no batching) beside KServe's own endpoints, and leaves KServe's
# inference path as it is.
KSERVE_SERVER = """\
import argparse
import uuid
import grpc
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.model_server import app as rest_app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

CONFIG = {config!r}
# The gRPC ModelConfigResponse, serialized by the caller with tritonclient's messages (importing
# those here would clash with KServe's own copy of the inference protos).
CONFIG_RESPONSE = {config_response!r}


@rest_app.get("/v2/models/{{model}}/config")
async def model_config(model: str):
    return CONFIG


async def grpc_model_config(request, context):
    return CONFIG_RESPONSE


_add = grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server


def add_with_model_config(servicer, server):
    _add(servicer, server)
    handler = grpc.unary_unary_rpc_method_handler(
        grpc_model_config, request_deserializer=bytes, response_serializer=bytes
    )
    service = "inference.GRPCInferenceService"
    generic = grpc.method_handlers_generic_handler(service, {{"ModelConfig": handler}})
    server.add_generic_rpc_handlers((generic,))


grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = add_with_model_config


class Cnn(Model):
    def __init__(self):
        super().__init__({name!r})
        self.it = Interpreter(model_path={tflite!r}, num_threads={threads})
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.batch = None
        self.ready = True

    def get_input_types(self):
        return [{{"name": "images", "datatype": {input_datatype!r}, "shape": [-1, 32, 32, 3]}}]

    def get_output_types(self):
        return [{{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        if self.batch != len(x):
            self.it.resize_tensor_input(self.inp["index"], [len(x), 32, 32, 3])
            self.it.allocate_tensors()
            self.batch = len(x)
        self.it.set_tensor(self.inp["index"], x.astype(self.inp["dtype"], copy=False))
        self.it.invoke()
        probs = self.it.get_tensor(self.out["index"]).astype(np.float32)
        out = InferOutput(name="probabilities", shape=list(probs.shape), datatype="FP32")
        out.set_data_from_numpy(probs, binary_data=True)
        return InferResponse(
            model_name=self.name,
            infer_outputs=[out],
            response_id=payload.id or str(uuid.uuid4()),  # KServe's REST response needs one
            use_binary_outputs=payload.use_binary_outputs,  # what the client asked for
            requested_outputs=payload.request_outputs,
        )


ModelServer(http_port={port}, grpc_port={grpc_port}, workers=1).start([Cnn()])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} not ready on port {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def input_dtype(artifact: Path) -> str:
    """The artifact's input dtype from its sidecar: uint8, int8 or float32."""
    return json.loads(Path(f"{artifact}.json").read_text())["input"]["dtype"]


def split_threads(args, processes: int) -> int:
    """Threads per process when ``processes`` share ``--threads`` (at least 1 each)."""
    return max(1, args.threads // processes)


def start_ours(args, work: Path, processes: int = 1) -> tuple[subprocess.Popen, dict]:
    port, grpc_port = free_port(), free_port()
    cmd = [
        str(REPO / ".venv/bin/cifar-deploy"),
        "serve",
        str(args.artifact),
        "--port",
        str(port),
        "--threads",
        str(split_threads(args, processes)),
        "--workers",
        str(processes),
        "--max-batch-size",
        str(args.max_batch),
        "--max-queue-delay-ms",
        str(args.delay_ms),
        "--name",
        MODEL,
        "--grpc-port",
        str(grpc_port),
    ]
    log = open(work / "ours.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, {"http": port, "grpc": grpc_port}


def start_triton(args, work: Path, site: str, processes: int = 1) -> tuple[subprocess.Popen, dict]:
    """Triton on the repository `export --format triton-python` writes, holding this very
    TFLite file; its python stub gets the peers venv's numpy (< 2) and ai-edge-litert.
    ``processes``: model instances (``instance_group`` count), each a python stub process."""
    from cifar_deploy.export.triton_python import config_pbtxt, model_py

    repo = work / "triton_repo" / MODEL
    (repo / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.artifact, repo / "1" / "model.tflite")
    (repo / "1" / "model.py").write_text(model_py())
    config = config_pbtxt(
        MODEL,
        input_dtype(args.artifact),
        args.max_batch,
        int(args.delay_ms * 1000),
        threads=split_threads(args, processes),
        instances=processes,
    )
    (repo / "config.pbtxt").write_text(config)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        str(args.peers / "tritonserver"),
        f"--model-repository={repo.parent}",
        f"--http-port={port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--log-error=false",
    ]
    log = open(work / "triton.log", "w")
    env = {**os.environ, "CIFAR_DEPLOY_PYTHON_PATH": site}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, {"http": port, "grpc": grpc_port}


def kserve_model_config(args) -> tuple[dict, bytes]:
    """What KServe is given to answer perf_analyzer's model configuration request: the model's
    input and output (``max_batch_size`` says the first dimension is the batch; KServe itself
    does no batching), as REST JSON and as a serialized gRPC ``ModelConfigResponse``."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2, service_pb2

    from cifar_deploy.export.triton_python import TRITON_TYPES

    input_type = TRITON_TYPES[input_dtype(args.artifact)]
    config = {
        "name": MODEL,
        "max_batch_size": args.max_batch,
        "input": [{"name": "images", "data_type": input_type, "dims": [32, 32, 3]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}],
    }
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return config, service_pb2.ModelConfigResponse(config=message).SerializeToString()


def start_kserve(args, work: Path) -> tuple[subprocess.Popen, dict]:
    port, grpc_port = free_port(), free_port()
    config, config_response = kserve_model_config(args)
    script = work / "kserve_server.py"
    tflite = str(Path(args.artifact).resolve())
    script.write_text(
        KSERVE_SERVER.format(
            name=MODEL,
            tflite=tflite,
            threads=args.threads,
            port=port,
            grpc_port=grpc_port,
            config=config,
            config_response=config_response,
            input_datatype=input_dtype(args.artifact).upper().replace("FLOAT32", "FP32"),
        )
    )
    log = open(work / "kserve.log", "w")
    python = str(args.peers / "venv/bin/python")
    proc = subprocess.Popen([python, str(script)], stdout=log, stderr=subprocess.STDOUT)
    return proc, {"http": port, "grpc": grpc_port}


RANDOM_IMAGES = ("--shape", "images:32,32,3", "--input-data", "random")


def run_perf_analyzer(
    binary: Path,
    address: str,
    protocol: str,
    concurrency: int,
    out: Path,
    data: tuple[str, ...] = RANDOM_IMAGES,
    measure_ms: int = 5000,
    trials: int = 3,
    batch: int = 1,
    model: str = MODEL,
) -> dict[str, str]:
    """One perf_analyzer closed-loop measurement of ``model`` at ``address``: the first row
    of its CSV (``Inferences/Second`` counts images, ``p50 latency`` is in us); RuntimeError
    with the last lines of its output when it fails."""
    cmd = [
        str(binary),
        *("-m", model, "-u", address, "-i", protocol, "-b", str(batch)),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *data,
        *("-p", str(measure_ms), "-s", "100", "-r", str(trials), "-f", str(out)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:]))
    with out.open() as f:
        return next(csv.DictReader(f))


def perf_analyzer(args, ports: dict, concurrency: int, work: Path, tag: str) -> dict:
    out = work / f"pa_{tag}_{args.protocol}_{concurrency}.csv"
    try:
        row = run_perf_analyzer(
            args.peers / "pa/perf_analyzer",
            f"127.0.0.1:{ports[args.protocol]}",
            args.protocol,
            concurrency,
            out,
            measure_ms=args.measure_ms,
        )
    except RuntimeError as exc:
        return {"error": str(exc).splitlines()}
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_ratios(results: list[dict], servers: list[str], levels: list[int], rounds: int) -> None:
    """The first server's requests/s over each other's, round by round (measured back to back),
    with both p99s."""
    first, cells = servers[0], {}
    for x in results:
        if "throughput" in x:
            cells[x["round"], x["server"], x["concurrency"]] = x
    for other in servers[1:]:
        print(f"\n{first} / {other}, round by round (requests/s ratio; p99 ms, ours/theirs):")
        for c in levels:
            parts = []
            for r in range(1, rounds + 1):
                a, b = cells.get((r, first, c)), cells.get((r, other, c))
                if a and b:
                    ratio = a["throughput"] / b["throughput"]
                    parts.append(f"{ratio:.2f}x ({a['p99_ms']:.1f}/{b['p99_ms']:.1f})")
            print(f"  {c}: " + ", ".join(parts))


def server_spec(server: str) -> tuple[str, int]:
    """``cifar-deploy:x2`` -> ("cifar-deploy", 2): two processes (our workers, Triton's model
    instances) sharing ``--threads``; a bare name is one process with all of them."""
    kind, _, count = server.partition(":x")
    return kind, int(count) if count.isdigit() and int(count) > 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers-env"))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure-ms", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--servers", default="cifar-deploy,triton,kserve")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if not (args.peers / "pa/perf_analyzer").exists():
        raise SystemExit(f"no perf_analyzer under {args.peers}: run bash ../shared/peers/setup.sh")
    site = subprocess.run(
        [
            str(args.peers / "venv/bin/python"),
            "-c",
            "import site; print(site.getsitepackages()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    starters = {
        "cifar-deploy": lambda w, n: start_ours(args, w, n),
        "triton": lambda w, n: start_triton(args, w, site, n),
        "kserve": lambda w, n: start_kserve(args, w),
    }
    for server in servers:
        kind, processes = server_spec(server)
        if kind not in starters or (kind == "kserve" and processes != 1):
            raise SystemExit(
                f"unknown server {server!r}; expected cifar-deploy[:xN], triton[:xN] or kserve"
            )
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        running: dict[str, tuple[subprocess.Popen, dict]] = {}
        try:
            for server in servers:  # all up at once, idle while another is measured
                (work / server).mkdir()
                kind, processes = server_spec(server)
                running[server] = starters[kind](work / server, processes)
                wait_ready(running[server][1]["http"], running[server][0], server)
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for c in levels:  # the servers back to back at each concurrency
                    for server in order:
                        figures = perf_analyzer(args, running[server][1], c, work, server)
                        results.append(
                            {"round": r + 1, "server": server, "concurrency": c, **figures}
                        )
                        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            for proc, _ in running.values():
                stop(proc)
    print(
        f"\n{cpu_name()}, {os.cpu_count()} cores; {args.artifact.name}, LiteRT {args.threads} "
        f"threads per server (NAME:xN: N processes of {args.threads}//N threads each); "
        f"perf_analyzer over {args.protocol}, single-image binary requests; "
        f"{args.rounds} rounds (min-max)\n"
    )
    print("| concurrency | " + " | ".join(servers) + " |")
    print("| ---: |" + " ---: |" * len(servers))
    for c in levels:
        cells = []
        for server in servers:
            rows = [x for x in results if x["server"] == server and x["concurrency"] == c]
            ok = [x for x in rows if "throughput" in x]
            if not ok:
                cells.append("failed: " + " ".join(rows[0].get("error", ["?"])) if rows else "-")
                continue
            tp = [x["throughput"] for x in ok]
            p50 = [x["p50_ms"] for x in ok]
            p99 = [x["p99_ms"] for x in ok]
            cells.append(
                f"{min(tp):,.0f}-{max(tp):,.0f} req/s, p50 {min(p50):.1f}-{max(p50):.1f} ms, "
                f"p99 {min(p99):.1f}-{max(p99):.1f} ms"
            )
        print(f"| {c} | " + " | ".join(cells) + " |")
    print_ratios(results, servers, levels, args.rounds)
    if args.json_out:
        args.json_out.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
