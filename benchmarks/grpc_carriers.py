"""What carrying a gRPC call costs, without any model: grpcio's asyncio server (on uvloop and on
asyncio's own loop) and grpcio's thread-pool server, each serving the Open Inference Protocol
methods perf_analyzer needs (this project's own HTTP/2 carrier, ``serving/grpc_wire.py``, is
gone: see issue #25),
with a ModelInfer that returns a constant answer. perf_analyzer drives each in turn over gRPC;
the server's CPU milliseconds per call come from /proc over the calls it answered.

    python benchmarks/grpc_carriers.py [--concurrency 8] [--peers /tmp/peers-env]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_frontend import cpu_seconds  # noqa: E402
from serve_peers import cpu_name, free_port, run_perf_analyzer, stop  # noqa: E402

# One server process: argv = carrier, port, file to write the number of ModelInfer calls to.
SERVER = """
import asyncio, os, signal, sys
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as cpb, service_pb2 as pb, service_pb2_grpc as pbg
carrier, port, count_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = [0]
signal.signal(signal.SIGTERM, lambda *a: (open(count_file, "w").write(str(calls[0])), os._exit(0)))
config = {"name": "cnn", "max_batch_size": 64,
          "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}],
          "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]}
Tensor = pb.ModelMetadataResponse.TensorMetadata
ANSWERS = {
    "ServerLive": pb.ServerLiveResponse(live=True),
    "ServerReady": pb.ServerReadyResponse(ready=True),
    "ServerMetadata": pb.ServerMetadataResponse(name="constant", version="1"),
    "ModelReady": pb.ModelReadyResponse(ready=True),
    "ModelConfig": pb.ModelConfigResponse(config=json_format.ParseDict(config, cpb.ModelConfig())),
    "ModelMetadata": pb.ModelMetadataResponse(
        name="cnn", versions=["1"], platform="constant",
        inputs=[Tensor(name="images", datatype="UINT8", shape=[-1, 32, 32, 3])],
        outputs=[Tensor(name="probabilities", datatype="FP32", shape=[-1, 10])]),
}
def infer(request):
    calls[0] += 1
    out = pb.ModelInferResponse.InferOutputTensor(
        name="probabilities", datatype="FP32", shape=[1, 10])
    return pb.ModelInferResponse(model_name="cnn", model_version="1", outputs=[out],
                                 raw_output_contents=[bytes(40)])
def answer(name):
    return lambda self, request, context: infer(request) if name == "ModelInfer" else ANSWERS[name]
def async_answer(name):
    sync = answer(name)
    async def call(self, request, context):
        return sync(self, request, context)
    return call
NAMES = [*ANSWERS, "ModelInfer"]
if carrier == "grpcio-threads":
    import grpc
    from concurrent import futures
    Servicer = type("S", (pbg.GRPCInferenceServiceServicer,), {n: answer(n) for n in NAMES})
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()
async def main():
    import grpc
    methods = {n: async_answer(n) for n in NAMES}
    Servicer = type("S", (pbg.GRPCInferenceServiceServicer,), methods)
    server = grpc.aio.server()
    pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
if carrier.endswith("asyncio"):
    asyncio.run(main())
else:
    import uvloop
    uvloop.run(main())
"""

CARRIERS = ("grpcio-aio (uvloop)", "grpcio-aio-asyncio", "grpcio-threads")


def measure(args, carrier: str, work: Path) -> dict:
    port = free_port()
    count_file = work / "calls"
    key = carrier.split(" ")[0]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, key, str(port), str(count_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # imports; perf_analyzer retries nothing, so give the server its start
        cpu0 = cpu_seconds(proc.pid)
        row = run_perf_analyzer(
            args.peers / "pa/perf_analyzer",
            f"127.0.0.1:{port}",
            "grpc",
            args.concurrency,
            work / "pa.csv",
            measure_ms=args.measure_ms,
        )
        cpu1 = cpu_seconds(proc.pid)
    finally:
        stop(proc)
    calls = int(count_file.read_text())
    return {
        "calls_per_s": float(row["Inferences/Second"]),
        "cpu_ms_per_call": (cpu1 - cpu0) * 1000 / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--measure-ms", type=int, default=3000)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers-env"))
    args = parser.parse_args()
    print(
        f"{cpu_name()}, {os.cpu_count()} cores; perf_analyzer over gRPC at concurrency "
        f"{args.concurrency}, constant answers\n"
    )
    print("| carrier | calls/s | server CPU ms per call |")
    print("| --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for carrier in CARRIERS:
            try:
                r = measure(args, carrier, Path(tmp))
            except RuntimeError as exc:
                print(f"| {carrier} | failed: {str(exc).splitlines()[-1]} | |")
                continue
            print(f"| {carrier} | {r['calls_per_s']:,.0f} | {r['cpu_ms_per_call']:.3f} |")


if __name__ == "__main__":
    main()
