"""``cifar-deploy serve``: the Open Inference Protocol server and its page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import _tf, console
from ..serving.limits import ServerLimits
from .common import LOOPBACK_HOSTS, Device, Opt, Threads, app, finite, handles_errors


@app.command("serve")
@handles_errors
def serve_cmd(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="An artifact (.tflite, .onnx, .keras, savedmodel/, triton/) or a directory of "
            "exports (exports/cnn/, exports/)."
        ),
    ],
    host: Annotated[str, Opt(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.", min=0, max=65535)] = 8000,
    name: Annotated[
        Optional[str], Opt(help="Model name in URLs (default: the sidecar's model name).")
    ] = None,
    max_batch_size: Annotated[int, Opt(help="Largest merged batch.", min=1, max=4096)] = 64,
    max_queue_delay_ms: Annotated[
        float, Opt(help="Longest wait for a batch to fill, ms.", min=0, max=10_000, callback=finite)
    ] = 2.0,
    threads: Threads = None,
    device: Annotated[Device, Opt(help="cpu or gpu.")] = Device.cpu,
    max_payload_mb: Annotated[
        float, Opt(help="Largest request body, MB.", min=0.01, max=4096, callback=finite)
    ] = 8.0,
    grpc_port: Annotated[
        Optional[int],
        Opt(
            help="Also serve the Open Inference Protocol over gRPC on this port (off by default).",
            min=0,
            max=65535,
        ),
    ] = None,
    max_connections: Annotated[
        int, Opt(help="Open HTTP connections at once; the next gets 503.", min=1)
    ] = ServerLimits.max_connections,
    header_timeout_s: Annotated[
        float,
        Opt(help="Seconds a connection may take to send a request head.", min=0.1, callback=finite),
    ] = ServerLimits.header_timeout_s,
    body_timeout_s: Annotated[
        float,
        Opt(
            help="Seconds a request may take to send its body (then 408).", min=0.1, callback=finite
        ),
    ] = ServerLimits.body_timeout_s,
    max_queue: Annotated[
        int,
        Opt(help="Requests waiting per model; beyond it 503 (gRPC: UNAVAILABLE) at once.", min=1),
    ] = ServerLimits.max_queue,
    grpc_max_connections: Annotated[
        int, Opt(help="Open gRPC connections at once (clients multiplex calls on a few).", min=1)
    ] = ServerLimits.grpc_max_connections,
    fast_path: Annotated[
        bool,
        Opt(
            "--fast-path/--no-fast-path",
            help="Answer plain HTTP/1.1 inference requests from the protocol, without the ASGI "
            "cycle (see docs/serve.md); off: every request takes the ASGI path.",
        ),
    ] = True,
    workers: Annotated[
        int,
        Opt(
            help="Server processes sharing the ports (SO_REUSEPORT), each with its own copy of "
            "the models; --threads is per worker (default: the cores shared out).",
            min=1,
            max=64,
        ),
    ] = 1,
    samples_dir: Annotated[
        Optional[Path],
        Opt(
            "--data-dir",
            help="A dataset whose test images the page at / offers as 'random test image' "
            "(CIFAR-10 or -100 directory, or a folder of images per class).",
        ),
    ] = None,
):
    """Serve an artifact, or a directory of them, over the Open Inference Protocol (KServe V2)
    with dynamic batching, and a page at / to try them on an image in a browser.

    ARTIFACT is one artifact (served as its model's name, or --name), or a directory: exports/cnn/
    serves every artifact its sidecars name, exports/ every model's, each as its own model (named
    after its file: cnn_int8.tflite, cnn_savedmodel) with its own batcher; one that cannot be
    loaded is reported and skipped. Endpoints: /v2/health/live, /v2/health/ready, POST
    /v2/repository/index, /v2/models/NAME (and NAME/versions/1), each with /ready, /config and
    /infer; /v1/classify (PNG/JPEG upload; ?model=NAME when several are served) and /metrics.
    Ctrl-C or SIGTERM lets in-flight requests finish. Connections that send nothing are closed
    after --header-timeout-s, bodies must arrive within --body-timeout-s, at most
    --max-connections HTTP and --grpc-max-connections gRPC connections are open at once (both
    within the open-file limit), and each model queues at most --max-queue requests (see
    docs/serve.md, "Limits").

    --workers N runs N server processes on the same ports, each with its own event loop and
    batchers: the kernel spreads connections over them and a connection stays with one. It pays
    under many concurrent connections; a lone request runs on one worker's share of the cores.
    /metrics sums every worker's values.
    """
    from ..runtime.predictors import default_threads
    from ..serving.launch import ServeOptions, serve_here
    from ..serving.limits import fit_to_open_files

    if host not in LOOPBACK_HOSTS:
        console.warn(
            f"--host {host} listens beyond this machine: anyone who can reach it can use the "
            "model (there is no authentication); put a proxy with TLS and auth in front"
        )
    limits, lowered = fit_to_open_files(
        ServerLimits(
            header_timeout_s,
            body_timeout_s,
            max_connections,
            max_queue=max_queue,
            grpc_max_connections=grpc_max_connections,
        ),
        grpc=grpc_port is not None,
    )
    if lowered:
        console.warn(lowered)
    options = ServeOptions(
        artifact,
        name,
        host,
        port,
        grpc_port,
        max_batch_size,
        max_queue_delay_ms,
        threads if threads is not None or workers == 1 else max(1, default_threads() // workers),
        device.value,
        int(max_payload_mb * 2**20),
        limits,
        _tf.is_verbose(),
        fast_path,
        samples_dir,
    )
    if workers == 1:
        serve_here(options, _announce)
        return
    from ..serving.workers import serve_workers

    serve_workers(options, workers, lambda started: _announce(started, workers))


def _announce(started, workers: int = 1) -> None:
    """What a started server prints: skipped artifacts, then what it serves, and where."""
    for bad, why in started.skipped:
        console.err.print(f"[yellow]skipped {bad}:[/] {why}", highlight=False)
    for line in started.lines:
        console.err.print(line, highlight=False)
    if workers > 1:
        console.err.print(f"{workers} worker processes, each serving every model", highlight=False)
