"""``cifar-deploy serve``: an Open Inference Protocol (KServe V2) server with dynamic batching, on
FastAPI + uvicorn.

REST endpoints: ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``/v2/models/{name}/infer`` (JSON tensors and the binary tensor data
extension, as Triton speaks them), ``/v1/classify`` (an uploaded PNG/JPEG -> top-k labels) and
``/metrics`` (Prometheus text). The protocol itself lives in :mod:`.protocol`, image decoding in
:mod:`.images`; this module is the application around them. Every bad request gets a 4xx JSON
error that says what was received and what is expected; an unexpected error is logged with its
traceback and answered with a JSON 500, and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request  # module level: route annotations resolve from here

from ..errors import RequestError
from .batcher import DynamicBatcher
from .images import decode_image, top_k
from .protocol import (
    HEADER_LENGTH,
    check_outputs,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from .runtimes import Predictor

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 8 * 2**20  # default request size limit: 8 MB
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # rows per inference call


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    requests = Counter(
        "cifar_requests",
        "Requests by endpoint and status",
        ["endpoint", "status"],
        registry=registry,
    )
    latency = Histogram(
        "cifar_request_latency_seconds",
        "Request latency",
        ["endpoint"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    batch = Histogram(
        "cifar_batch_size", "Rows per inference call", registry=registry, buckets=BATCH_BUCKETS
    )
    queue = Gauge("cifar_queue_depth", "Requests waiting for a batch", registry=registry)
    return registry, {"requests": requests, "latency": latency, "batch": batch, "queue": queue}


def _endpoint(path: str) -> str:
    """Metric label for a path: model names folded into ``{name}``."""
    if not path.startswith("/v2/models/"):
        return path
    for suffix in ("/infer", "/ready"):
        if path.endswith(suffix):
            return "/v2/models/{name}" + suffix
    return "/v2/models/{name}"


class Observe:
    """Pure ASGI middleware (Starlette's ``@app.middleware("http")`` costs a task and a stream
    copy per request): the payload limit from Content-Length, a JSON 500 instead of a bare error
    page, and request, latency and queue metrics."""

    def __init__(self, app, metrics: dict, batcher: DynamicBatcher, max_payload_bytes: int):
        self.app, self.m, self.batcher, self.limit = app, metrics, batcher, max_payload_bytes

    async def _json(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.limit:
                message = (
                    f"payload of {int(length):,} bytes exceeds the limit of {self.limit:,} bytes"
                )
                await self._json(tracking_send, 413, message)
            else:
                await self.app(scope, receive, tracking_send)
        except Exception as exc:  # never a bare 500 page: a JSON error, logged, and keep serving
            log.exception("internal error on %s %s", scope.get("method"), scope["path"])
            if not state["started"]:
                await self._json(tracking_send, 500, f"internal error: {type(exc).__name__}")
        finally:
            endpoint = _endpoint(scope["path"])
            self.m["requests"].labels(endpoint, str(state["status"])).inc()
            self.m["latency"].labels(endpoint).observe(time.perf_counter() - started)
            self.m["queue"].set(self.batcher.queue_depth)


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class ModelService:
    """The handlers for one model: health, metadata, inference, classification and metrics,
    sharing one predictor, one dynamic batcher and one metrics registry."""

    def __init__(self, predictor: Predictor, name: str, batcher: DynamicBatcher, metrics, limit):
        self.predictor, self.name, self.batcher, self.limit = predictor, name, batcher, limit
        self.registry, self.m = metrics

    def _unknown(self, model_name: str):
        """A 404 response for another model's name, else None."""
        if model_name != self.name:
            return _error(404, f"unknown model {model_name!r}; this server serves {self.name!r}")
        return None

    async def _body(self, request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limit:
                raise RequestError(f"payload exceeds the limit of {self.limit:,} bytes", 413)
        return bytes(body)

    async def live(self):
        return {"live": True}

    async def ready(self):
        return {"ready": True}

    async def server_metadata(self):
        return {"name": "cifar-deploy", "version": "1", "extensions": ["binary_tensor_data"]}

    async def metadata(self, model_name: str, version: str | None = None):
        return self._unknown(model_name) or model_metadata(self.name, self.predictor)

    async def model_ready(self, model_name: str):
        return self._unknown(model_name) or {"name": self.name, "ready": True}

    async def infer(self, model_name: str, request: Request, version: str | None = None):
        from fastapi.responses import Response

        if (missing := self._unknown(model_name)) is not None:
            return missing
        try:
            body = await self._body(request)
            req, images = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            check_outputs(req)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        probs = await self.batcher.submit(images)
        encoded = encode_infer_response(req, self.name, probs)
        return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)

    async def classify(self, request: Request, top: int = 3):
        try:
            if not 1 <= top <= 10:
                raise RequestError(f"top must be 1..10, received {top}")
            image = decode_image(await _upload_bytes(request, await self._body(request)))
        except RequestError as exc:
            return _error(exc.status, exc.message)
        probs = (await self.batcher.submit(image[None]))[0]
        predictions = top_k(probs, top, self.predictor.class_names)
        return {"model_name": self.name, "predictions": predictions}

    async def metrics(self):
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.m["queue"].set(self.batcher.queue_depth)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[tuple[str, object, str]]:
        """(path, handler, method) for every endpoint."""
        return [
            ("/v2/health/live", self.live, "GET"),
            ("/v2/health/ready", self.ready, "GET"),
            ("/v2", self.server_metadata, "GET"),
            ("/v2/models/{model_name}", self.metadata, "GET"),
            ("/v2/models/{model_name}/versions/{version}", self.metadata, "GET"),
            ("/v2/models/{model_name}/ready", self.model_ready, "GET"),
            ("/v2/models/{model_name}/infer", self.infer, "POST"),
            ("/v2/models/{model_name}/versions/{version}/infer", self.infer, "POST"),
            ("/v1/classify", self.classify, "POST"),
            ("/metrics", self.metrics, "GET"),
        ]


def _add_error_handlers(app) -> None:
    """Framework errors in the project's JSON error shape."""
    from fastapi.exceptions import RequestValidationError

    async def not_found(request, exc):
        return _error(404, f"no endpoint {request.method} {request.url.path}")

    async def not_allowed(request, exc):
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    async def invalid(request, exc):
        return _error(422, f"invalid request: {exc.errors()[0].get('msg', 'validation error')}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.add_exception_handler(RequestValidationError, invalid)


def create_app(
    predictor: Predictor,
    name: str,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 2.0,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
):
    """The FastAPI application serving ``predictor`` as model ``name``."""
    registry, m = _metrics()
    batcher = DynamicBatcher(
        predictor.predict, max_batch_size, max_queue_delay_ms, on_batch=m["batch"].observe
    )
    service = ModelService(predictor, name, batcher, (registry, m), max_payload_bytes)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()  # in-flight requests finish before shutdown completes

    app = FastAPI(title="cifar-deploy", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(Observe, metrics=m, batcher=batcher, max_payload_bytes=max_payload_bytes)
    for path, handler, method in service.routes():
        app.add_api_route(path, handler, methods=[method])
    _add_error_handlers(app)
    return app


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
