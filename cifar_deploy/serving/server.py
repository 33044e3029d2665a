"""``cifar-deploy serve``: an Open Inference Protocol (KServe V2) server with dynamic batching, on
FastAPI + uvicorn.

REST endpoints: ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``/v2/models/{name}/config`` (Triton's model configuration, for
perf_analyzer), ``/v2/models/{name}/infer`` (JSON tensors and the binary tensor data
extension, as Triton speaks them), ``/v1/classify`` (an uploaded PNG/JPEG -> top-k labels) and
``/metrics`` (Prometheus text). The protocol itself lives in :mod:`.protocol`, image decoding in
:mod:`.images`; this module is the application around them. Every bad request gets a 4xx JSON
error that says what was received and what is expected; an unexpected error is logged with its
traceback and answered with a JSON 500, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # module level: route annotations resolve from here

from ..errors import RequestError
from ..runtime.predictors import Predictor
from .batcher import DynamicBatcher
from .images import decode_image, top_k
from .limits import BodyBudget, OpenConnections, ServerLimits, quiet_loop_errors
from .protocol import (
    HEADER_LENGTH,
    JSON_TYPE,
    MODEL_VERSION,
    Encoded,
    check_image_shape,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_infer_request,
)

log = logging.getLogger(__name__)
# Uploaded images decoded at once (each may hold up to imaging.MAX_DECODED_BYTES).
DECODES_AT_ONCE = 2

MAX_PAYLOAD_BYTES = 8 * 2**20  # default request size limit: 8 MB
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # rows per inference call
# Where the workers of serve --workers keep their metric values (prometheus_client's
# multiprocess mode, read when prometheus_client is first imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    requests = Counter(
        "cifar_requests",
        "Requests by endpoint, model and status",
        ["endpoint", "model", "status"],
        registry=registry,
    )
    latency = Histogram(
        "cifar_request_latency_seconds",
        "Request latency",
        ["endpoint", "model"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    batch = Histogram(
        "cifar_batch_size",
        "Rows per inference call",
        ["model"],
        registry=registry,
        buckets=BATCH_BUCKETS,
    )
    queue = Gauge(
        "cifar_queue_depth",
        "Requests waiting for a batch",
        ["model"],
        registry=registry,
        multiprocess_mode="livesum",  # serve --workers: summed over the live workers
    )
    return registry, {"requests": requests, "latency": latency, "batch": batch, "queue": queue}


def scraped(registry):
    """The registry ``/metrics`` reads: this process's own, or under ``serve --workers``
    (``PROMETHEUS_MULTIPROC_DIR`` set) every worker's values, summed, whichever worker answers
    the scrape."""
    if not os.environ.get(MULTIPROC_ENV):
        return registry
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


MODEL_ROUTE = "/v2/models/{model_name}"
# Statuses sent before the whole body was read (too large, too slow, too much buffered): the
# connection is closed after them, or the unread rest would be parsed as the next request.
CLOSE_AFTER = frozenset({408, 413, 503})


class RouteLabels:
    """Metric labels from the application's own route table: a path is labelled with its route
    template, names and versions folded into ``{name}`` and ``{version}``, and every path no
    route matches shares one ``unmatched`` label, so no request can add a label of its own
    choosing."""

    def __init__(self, paths):
        paths = list(paths)
        self.fixed = frozenset(p for p in paths if "{" not in p)
        tails = {p[len(MODEL_ROUTE) :] for p in paths if p.startswith(MODEL_ROUTE)}
        # The model routes' own tails, and /infer, which ServerApp hands over before routing.
        self.suffixes = frozenset(t for t in tails if not t.startswith("/versions")) | {"/infer"}

    def __call__(self, path: str) -> tuple[str, str]:
        """(metric label for a path, the model name in it or "")."""
        if path in self.fixed:
            return path, ""
        parts = path.split("/")  # "", "v2", "models", name, ["versions", v,] [suffix]
        if len(parts) < 4 or parts[1:3] != ["v2", "models"] or not parts[3]:
            return "unmatched", ""
        template, rest = "/v2/models/{name}", parts[4:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            template, rest = template + "/versions/{version}", rest[2:]
        suffix = "/" + "/".join(rest) if rest else ""
        if suffix not in self.suffixes:
            return "unmatched", ""
        return template + suffix, parts[3]


def _infer_target(scope) -> tuple[str, str | None] | None:
    """(model name, version or None) of ``POST /v2/models/{name}[/versions/{v}]/infer``, else
    None."""
    return infer_path(scope["path"]) if scope["method"] == "POST" else None


def infer_path(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) when ``path`` is ``/v2/models/{name}[/versions/{v}]/infer``,
    else None: the path is split once, here."""
    parts = path.split("/")  # "", "v2", "models", name, ["versions", v,] "infer"
    if len(parts) == 5 and parts[1:3] == ["v2", "models"] and parts[4] == "infer":
        return parts[3], None
    if len(parts) == 7 and parts[1:3] == ["v2", "models"] and parts[4] == "versions":
        return (parts[3], parts[5]) if parts[6] == "infer" else None
    return None


async def _send(send, status: int, encoded: Encoded) -> None:
    raw = [(b"content-type", encoded.media_type), (b"content-length", b"%d" % len(encoded.body))]
    await send(
        {"type": "http.response.start", "status": status, "headers": raw + [*encoded.headers]}
    )
    await send({"type": "http.response.body", "body": encoded.body})


class ServerApp:
    """The application uvicorn runs, outside the framework (whose middleware stack costs
    several layers per request, each wrapping ``send``): the payload limit from
    Content-Length, inference requests handed to the repository's raw handler (the hot path,
    before the framework sees them), a JSON 500 instead of a bare error page, and request,
    latency and queue metrics per model. Everything else goes to the FastAPI ``app``;
    ``state`` is that app's. ``open_connections`` is for the server's protocol to keep bound
    (see :func:`~.limits.uvicorn_config`)."""

    def __init__(
        self, app, metrics: dict, repository: ModelRepository, open_connections: OpenConnections
    ):
        self.app, self.m, self.repository = app, metrics, repository
        self.open_connections = open_connections
        self.limit = repository.limit
        self.label = RouteLabels(path for path, _, _ in repository.routes())
        self._children: dict[tuple, object] = {}

    @property
    def state(self):
        return self.app.state

    async def _json(self, send, status: int, message: str) -> None:
        await _send(send, status, _error(message))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                if message["status"] in CLOSE_AFTER:  # the body may be partly unread: close
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.limit:
                message = (
                    f"payload of {int(length):,} bytes exceeds the limit of {self.limit:,} bytes"
                )
                await self._json(tracking_send, 413, message)
            elif (target := _infer_target(scope)) is not None:
                await self.repository.infer_asgi(*target, scope, receive, tracking_send)
            else:
                await self.app(scope, receive, tracking_send)
        except Exception as exc:  # never a bare 500 page: a JSON error, logged, and keep serving
            log.exception("internal error on %s %s", scope.get("method"), scope["path"])
            if not state["started"]:
                await self._json(tracking_send, 500, f"internal error: {type(exc).__name__}")
        finally:
            endpoint, name = self.label(scope["path"])
            self.count(endpoint, name, state["status"], time.perf_counter() - started)

    def count(self, endpoint: str, name: str, status: int | str, seconds: float) -> None:
        """One answered request in the metrics: by route template (a gRPC call: its method's
        path), model and status (a gRPC call: its status code's name). A model the server does
        not serve (a 404) counts under the empty model label, so no request adds a label, or an
        entry here, of its own choosing."""
        model = name if name in self.repository.models else ""
        key = (endpoint, model, status)
        children = self._children.get(key)
        if children is None:  # once per label set: route templates, models and statuses
            children = self._children[key] = self._bind(endpoint, model, status)
        requests, latency, queue, batcher = children
        requests.inc()
        latency.observe(seconds)
        if queue is not None:
            queue.set(batcher.queue_depth)

    def _bind(self, endpoint: str, model: str, status: int | str) -> tuple:
        """The metric children of one label set (``model``: a served model, or "")."""
        served = self.repository.models.get(model) if model else None
        requests = self.m["requests"].labels(endpoint, model, str(status))
        latency = self.m["latency"].labels(endpoint, model)
        if served is None:
            return requests, latency, None, None
        return requests, latency, self.m["queue"].labels(model), served.batcher


class ServerLane:
    """The server's side of the HTTP inference lane (see :mod:`.http_lane`): which paths are
    inference, their answers from :meth:`ModelRepository.infer`, and the lane's own errors, with the
    same messages, logging and metrics as the ASGI path through :class:`ServerApp`."""

    def __init__(self, observe: ServerApp):
        self.observe, self.repository = observe, observe.repository
        self.budget = self.repository.body

    @staticmethod
    def target(path: bytes) -> tuple[str, str | None] | None:
        try:
            return infer_path(path.decode("ascii"))
        except UnicodeDecodeError:
            return None  # uvicorn's path decides what such a request gets

    async def answer(
        self, target, infer_length: bytes | None, body: bytes, started: float
    ) -> tuple[int, Encoded]:
        status = 500
        try:
            length = None if infer_length is None else infer_length.decode("latin-1")
            status, encoded = await self.repository.infer(*target, body, length)
            return status, encoded
        except Exception as exc:  # as on the ASGI path: logged, a JSON 500, and keep serving
            log.exception("internal error on POST %s", _infer_url(*target))
            return 500, _error(f"internal error: {type(exc).__name__}")
        finally:
            self._count(target, status, started)

    def error(self, target, status: int, message: str, started: float) -> Encoded:
        self._count(target, status, started)
        return _error(message)

    def _count(self, target, status: int, started: float) -> None:
        name, version = target
        endpoint = INFER_ENDPOINTS[version is not None]
        self.observe.count(endpoint, name, status, asyncio.get_running_loop().time() - started)


# The metric labels of the two inference routes: without and with a version.
INFER_ENDPOINTS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def _infer_url(name: str, version: str | None) -> str:
    return f"/v2/models/{name}" + ("" if version is None else f"/versions/{version}") + "/infer"


def _error(message: str) -> Encoded:
    """The project's JSON error body."""
    return Encoded(json.dumps({"error": message}).encode(), JSON_TYPE)


def _error_response(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


@dataclass
class ServedModel:
    """One model of the repository: its predictor and its own dynamic batcher."""

    name: str
    predictor: Predictor
    batcher: DynamicBatcher
    version: str = MODEL_VERSION


class ModelRepository:
    """The handlers for every served model: health, the repository index, per-model metadata,
    configuration, readiness and inference, classification and metrics. Artifacts that could
    not be loaded are listed in the index as unavailable, with the reason."""

    def __init__(
        self,
        models: dict[str, ServedModel],
        metrics,
        body: BodyBudget,
        skipped=None,
        samples: SampleImages | None = None,
    ):
        self.models, self.body, self.limit = models, body, body.max_payload
        self.registry, self.m = metrics
        self.skipped: dict[str, str] = dict(skipped or {})  # artifact -> why it is not served
        self.samples = samples  # test images for the page's "random test image"
        self.grpc_calls = 0  # gRPC inference calls in progress
        self.decoding = asyncio.Semaphore(DECODES_AT_ONCE)  # uploads being decoded

    def model(self, model_name: str, version: str | None = None) -> ServedModel:
        model = self.models.get(model_name)
        if model is None:
            served = ", ".join(repr(n) for n in self.models)
            raise RequestError(f"unknown model {model_name!r}; this server serves {served}", 404)
        if version is not None and version != model.version:
            raise RequestError(
                f"model {model_name!r} has version {model.version!r}, not {version!r}", 404
            )
        return model

    async def _body(self, request: Request) -> bytes:
        return await self.body.read(request.receive)

    async def live(self):
        return {"live": True}

    async def ready(self):
        return {"ready": bool(self.models)}

    async def server_metadata(self):
        extensions = ["binary_tensor_data", "model_repository", "model_configuration"]
        return {"name": "cifar-deploy", "version": "1", "extensions": extensions}

    async def index(self):
        """``POST /v2/repository/index`` (Triton's model repository extension)."""
        ready = [
            {"name": n, "version": m.version, "state": "READY"} for n, m in self.models.items()
        ]
        skipped = [
            {"name": n, "version": "", "state": "UNAVAILABLE", "reason": why}
            for n, why in self.skipped.items()
        ]
        return ready + skipped

    def model_metadata(self, model_name: str, version: str | None = None) -> dict:
        model = self.model(model_name, version)
        return model_metadata(model.name, model.predictor)

    async def metadata(self, model_name: str, version: str | None = None):
        try:
            return self.model_metadata(model_name, version)
        except RequestError as exc:
            return _error_response(exc.status, exc.message)

    def model_configuration(self, model_name: str, version: str | None = None) -> dict:
        """Triton's model configuration (REST and gRPC), which perf_analyzer asks for first."""
        model = self.model(model_name, version)
        b = model.batcher
        return model_config(model.name, model.predictor, b.max_batch_size, b.max_delay * 1000)

    async def config(self, model_name: str, version: str | None = None):
        try:
            return self.model_configuration(model_name, version)
        except RequestError as exc:
            return _error_response(exc.status, exc.message)

    async def model_ready(self, model_name: str, version: str | None = None):
        try:
            return {"name": self.model(model_name, version).name, "ready": True}
        except RequestError as exc:
            return _error_response(exc.status, exc.message)

    @staticmethod
    async def predict(model: ServedModel, images: np.ndarray) -> np.ndarray:
        """The one inference path of every protocol (REST, the HTTP lane, gRPC, the upload
        route): ``images`` checked against the model's input, then its batcher's answer.
        Raises :class:`RequestError` for a wrong shape (400) and a full queue (503)."""
        check_image_shape(images, model.predictor.signature)
        return await model.batcher.submit(images)

    async def infer(
        self, model_name: str, version: str | None, body: bytes, header_length: str | None
    ) -> tuple[int, Encoded]:
        """(status, encoded answer) of ``POST .../infer`` with this body (and the binary
        extension's header length, when given): the answer, or the 4xx error that says what is
        wrong with the request."""
        try:
            model = self.model(model_name, version)
            req, images = parse_infer_request(body, header_length)
            probs = await self.predict(model, images)
        except RequestError as exc:
            return exc.status, _error(exc.message)
        return 200, encode_infer_response(req, model.name, probs)

    async def infer_asgi(self, model_name: str, version: str | None, scope, receive, send) -> None:
        """``POST .../infer`` as a raw ASGI handler, without the framework's routing, request
        and response objects; the same checks and errors as every route. (Plain HTTP/1.1
        requests take the protocol's own lane instead: see :mod:`.http_lane`.)"""
        try:
            self.model(model_name, version)  # an unknown model is named before the body is read
            body = await self.body.read(receive)
        except RequestError as exc:
            return await _send(send, exc.status, _error(exc.message))
        length = dict(scope["headers"]).get(HEADER_LENGTH.lower().encode())
        status, encoded = await self.infer(
            model_name, version, body, None if length is None else length.decode("latin-1")
        )
        await _send(send, status, encoded)

    async def classify(self, request: Request, top: int = 3, model: str | None = None):
        try:
            if not 1 <= top <= 100:
                raise RequestError(f"top must be 1..100, received {top}")
            if model is None and len(self.models) > 1:
                names = ", ".join(self.models)
                raise RequestError(
                    f"this server serves several models; pass ?model= one of {names}"
                )
            served = self.model(model) if model is not None else next(iter(self.models.values()))
            upload = await _upload_bytes(request, await self._body(request))
            signature = served.predictor.signature
            size = (signature.height, signature.width)
            async with self.decoding:  # at most DECODES_AT_ONCE images held decoded at once
                image = await asyncio.to_thread(decode_image, upload, size)  # off the loop
            probs = (await self.predict(served, image[None]))[0]
        except RequestError as exc:
            return _error_response(exc.status, exc.message)
        predictions = top_k(probs, top, served.predictor.class_names)
        return {"model_name": served.name, "predictions": predictions}

    async def page(self):
        """``GET /``: a page to try every served model on an image, through the endpoints
        above (one file inside the package: no network needed)."""
        from fastapi.responses import HTMLResponse

        return HTMLResponse(_page_html())

    async def random_sample(self):
        """``GET /v1/samples/random``: one test image (a PNG data URL) and its true class, when
        the server was given a dataset (``serve --data-dir``); 404 otherwise."""
        if self.samples is None:
            return _error_response(
                404, "this server was started without test images; pass serve --data-dir PATH"
            )
        index, png, label = self.samples.draw()
        image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return {"index": index, "label": label, "image": image}

    async def metrics(self):
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for name, model in self.models.items():
            self.m["queue"].labels(name).set(model.batcher.queue_depth)
        return Response(generate_latest(scraped(self.registry)), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[tuple[str, object, str]]:
        """(path, handler, method) for every endpoint but inference, which ``ServerApp`` hands
        to ``infer_asgi`` before the framework sees it."""
        per_model = [
            ("", self.metadata),
            ("/config", self.config),
            ("/ready", self.model_ready),
        ]
        return [
            ("/v2/health/live", self.live, "GET"),
            ("/v2/health/ready", self.ready, "GET"),
            ("/v2", self.server_metadata, "GET"),
            ("/v2/repository/index", self.index, "POST"),
            *[(f"{MODEL_ROUTE}{tail}", h, "GET") for tail, h in per_model],
            *[(f"{MODEL_ROUTE}/versions/{{version}}{tail}", h, "GET") for tail, h in per_model],
            ("/v1/classify", self.classify, "POST"),
            ("/metrics", self.metrics, "GET"),
            ("/", self.page, "GET"),
            ("/v1/samples/random", self.random_sample, "GET"),
        ]


@functools.cache
def _page_html() -> str:
    from importlib.resources import files

    return files("cifar_deploy.serving").joinpath("page/index.html").read_text(encoding="utf-8")


@dataclass
class SampleImages:
    """Test images the page can draw from: uint8 NHWC, their labels, the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]

    def draw(self) -> tuple[int, bytes, str]:
        """(index, PNG bytes, true class name) of a random image."""
        from PIL import Image

        index = int(np.random.default_rng().integers(len(self.labels)))
        buffer = io.BytesIO()
        Image.fromarray(self.images[index]).save(buffer, format="PNG")
        return index, buffer.getvalue(), str(self.class_names[int(self.labels[index])])


def _add_error_handlers(app) -> None:
    """Framework errors in the project's JSON error shape."""
    from fastapi.exceptions import RequestValidationError

    async def not_found(request, exc):
        return _error_response(404, f"no endpoint {request.method} {request.url.path}")

    async def not_allowed(request, exc):
        return _error_response(405, f"{request.method} is not allowed on {request.url.path}")

    async def invalid(request, exc):
        return _error_response(
            422, f"invalid request: {exc.errors()[0].get('msg', 'validation error')}"
        )

    async def internal(request, exc):  # the framework re-raises it; ServerApp logs it
        return _error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(Exception, internal)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.add_exception_handler(RequestValidationError, invalid)


def build_server_app(
    predictors: Predictor | Mapping[str, Predictor],
    name: str | None = None,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 2.0,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    skipped: Mapping[str, str] | None = None,
    grpc_port: int | None = None,
    grpc_host: str = "127.0.0.1",
    grpc_socket=None,
    limits: ServerLimits | None = None,
    samples: SampleImages | None = None,
):
    """The FastAPI application serving one predictor as model ``name``, or a repository of
    them (``{name: predictor}``), each with its own dynamic batcher; ``skipped`` lists the
    artifacts that could not be loaded (name -> reason) for the repository index. With
    ``grpc_port`` (0: any free port, then ``app.state.grpc_port``), the gRPC service starts
    and stops with the application, on its event loop; ``grpc_socket``, a listening socket,
    serves it instead of binding ``grpc_host:grpc_port`` (a worker of ``serve --workers``)."""
    if not isinstance(predictors, Mapping):
        predictors = {name or predictors.metadata.model_name: predictors}
    registry, m = _metrics()
    connections = OpenConnections()
    limits = limits or ServerLimits()

    def more_possible(requests_in_batch: int) -> bool:
        """Another request can still come: a connection without its request in the batch,
        or a gRPC call in progress."""
        return len(connections) > requests_in_batch or repository.grpc_calls > 0

    models = {
        n: ServedModel(
            n,
            p,
            DynamicBatcher(
                p.predict,
                max_batch_size,
                max_queue_delay_ms,
                on_batch=m["batch"].labels(n).observe,
                more_possible=more_possible,
                max_queue=limits.max_queue,
            ),
        )
        for n, p in predictors.items()
    }
    body = BodyBudget(limits, max_payload_bytes)
    repository = ModelRepository(models, (registry, m), body, skipped, samples)

    @asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_exception_handler(quiet_loop_errors)
        for model in models.values():
            model.batcher.start()
        grpc_server = None
        if grpc_port is not None:
            from .grpc_server import start_grpc

            grpc_server = await start_grpc(
                repository,
                grpc_host,
                grpc_port,
                max_payload_bytes,
                limits,
                observe.count,
                sock=grpc_socket,
            )
            app.state.grpc_port = grpc_server.bound_port
        yield
        if grpc_server is not None:
            grpc_server.cap_watch.cancel()
            await grpc_server.stop(grace=30)
        for model in models.values():  # in-flight requests finish before shutdown completes
            await model.batcher.stop()

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, blank offline.
    # The page at / is the served models' live example; /openapi.json stays for tools.
    app = FastAPI(title="cifar-deploy", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.repository = repository
    for path, handler, method in repository.routes():
        app.add_api_route(path, handler, methods=[method])
    _add_error_handlers(app)
    observe = ServerApp(app, m, repository, connections)
    observe.lane = ServerLane(observe)  # for the protocol (see :func:`~.limits.uvicorn_config`)
    return observe


def load_repository(
    path: Path, device: str = "cpu", threads: int | None = None
) -> tuple[dict[str, Predictor], dict[str, str]]:
    """({name: predictor}, {name: why it is skipped}) for every artifact under ``path`` (see
    :func:`repository_artifacts`). Each is loaded, which includes answering a probe batch (see
    :func:`~.runtimes.load_predictor`), before it counts as served; one that fails is reported
    and skipped, and the others serve."""
    from ..errors import one_line
    from ..runtime.artifacts import load_metadata, repository_artifacts, served_name
    from ..runtime.predictors import load_predictor

    served: dict[str, Predictor] = {}
    skipped: dict[str, str] = {}
    for artifact in repository_artifacts(path):
        name = artifact.name
        try:
            metadata = load_metadata(artifact)
            name = served_name(artifact, metadata)
            predictor = load_predictor(artifact, device, threads, metadata)
        except Exception as exc:  # a bad artifact is reported and skipped, not fatal
            skipped[name] = one_line(exc)
            continue
        if name in served:
            skipped[f"{name} ({artifact})"] = f"another artifact is already served as {name!r}"
            continue
        served[name] = predictor
    return served, skipped


async def _upload_bytes(request, body: bytes) -> bytes:
    """The image bytes of a multipart upload (field ``file``) or of a raw body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(Headers(scope=request.scope), stream()).parse()
    except Exception as exc:
        raise RequestError(f"malformed multipart body ({exc})") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError("expected the image in a multipart field named 'file'")
    return await upload.read()
