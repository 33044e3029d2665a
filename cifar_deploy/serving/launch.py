"""Starting ``cifar-deploy serve``: what it serves and how (:class:`ServeOptions`), loading the
models, and running one server process (:func:`serve_here`). ``--workers N`` runs N of those
processes on the same ports (:mod:`.workers`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidModelError, InvalidOptionError
from .limits import ServerLimits


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``serve`` was asked for; picklable, so that worker processes get it too."""

    artifact: Path
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    max_batch_size: int = 64
    max_queue_delay_ms: float = 2.0
    threads: int | None = None
    device: str = "cpu"
    max_payload_bytes: int = 8 * 2**20
    limits: ServerLimits = field(default_factory=ServerLimits)
    verbose: bool = False
    fast_path: bool = True  # plain inference requests answered from the protocol (http_lane)
    data_dir: Path | None = None  # test images for the page's "random test image"


@dataclass(frozen=True)
class Started:
    """What a started server says about itself: one line per served model, the artifacts it
    skipped (name -> reason)."""

    lines: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def load_models(options: ServeOptions):
    """({name: predictor}, {name: why skipped}) for ``options.artifact``: a directory serves
    every artifact in it (a bad one is skipped), a file serves itself."""
    from ..runtime.artifacts import is_repository
    from ..runtime.predictors import load_predictor
    from .server import load_repository

    if is_repository(options.artifact):
        if options.name is not None:
            raise InvalidOptionError(
                "--name names one artifact; a directory's models are named after their files"
            )
        predictors, skipped = load_repository(options.artifact, options.device, options.threads)
        if not predictors:
            raise InvalidModelError(
                f"{options.artifact}: none of its {len(skipped)} artifacts loads"
            )
        return predictors, skipped
    predictor = load_predictor(options.artifact, device=options.device, threads=options.threads)
    return {options.name or predictor.metadata.model_name: predictor}, {}


def load_samples(data_dir: Path, predictors: dict):
    """The test split of ``data_dir`` at the first served model's input size, for the page."""
    from ..data import load_dataset
    from .server import SampleImages

    signature = next(iter(predictors.values())).signature
    data = load_dataset(data_dir, download=False, size=(signature.height, signature.width))
    return SampleImages(data.x_test, data.y_test, data.class_names)


def serve_here(
    options: ServeOptions,
    announce: Callable[[Started], None],
    http_socket: socket.socket | None = None,
    grpc_socket: socket.socket | None = None,
) -> None:
    """Load the models, call ``announce`` once they answer, and serve until SIGINT or SIGTERM
    (in-flight requests finish). Without sockets it binds ``options.host:port`` itself."""
    import uvicorn

    from .limits import uvicorn_config
    from .server import build_server_app

    predictors, skipped = load_models(options)
    samples = load_samples(options.data_dir, predictors) if options.data_dir else None
    app = build_server_app(
        predictors,
        None,
        options.max_batch_size,
        options.max_queue_delay_ms,
        options.max_payload_bytes,
        skipped=skipped,
        grpc_port=options.grpc_port,
        grpc_host=options.host,
        grpc_socket=grpc_socket,
        limits=options.limits,
        samples=samples,
    )
    lines = [
        f"serving {p.path} as {n!r} ({p.provider}) on "
        f"http://{options.host}:{options.port}/v2/models/{n}"
        for n, p in predictors.items()
    ]
    if options.grpc_port is not None:
        lines.insert(
            0, f"gRPC (inference.GRPCInferenceService) on {options.host}:{options.grpc_port}"
        )
    announce(Started(tuple(lines), tuple(skipped.items())))
    config = uvicorn_config(
        app, options.host, options.port, options.limits, options.fast_path, log_level="warning"
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it stopped on,
        # after its graceful shutdown: the server ended as asked
        if http_socket is None:
            server.run()
        else:
            server.run(sockets=[http_socket])
