"""An Open Inference Protocol (KServe V2) server with dynamic batching, on FastAPI + uvicorn.

REST endpoints: ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``/v2/models/{name}/infer`` (JSON tensors and the binary tensor data
extension, as Triton speaks them), ``/v1/classify`` (an uploaded PNG/JPEG -> top-k labels) and
``/metrics`` (Prometheus text). Every bad request gets a 4xx JSON error that says what was received
and what is expected; the server keeps serving.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request  # module level: route annotations resolve from here

from ..data import CLASS_NAMES
from .batcher import DynamicBatcher
from .runtimes import Predictor

MAX_PAYLOAD_BYTES = 8 * 2**20  # default request size limit: 8 MB
HEADER_LENGTH = "Inference-Header-Content-Length"
V2_DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16}  # fmt: skip
ACCEPTED_DTYPES = ("UINT8", "FP32")


class RequestError(Exception):
    """A bad request: becomes a 4xx JSON error with this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    return registry, {
        "requests": Counter("cifar_requests", "Requests by endpoint and status",
                            ["endpoint", "status"], registry=registry),
        "latency": Histogram("cifar_request_latency_seconds", "Request latency", ["endpoint"],
                             registry=registry,
                             buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5)),
        "batch": Histogram("cifar_batch_size", "Rows per inference call", registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
        "queue": Gauge("cifar_queue_depth", "Requests waiting for a batch", registry=registry),
    }  # fmt: skip


def input_datatype(predictor: Predictor) -> str:
    meta = predictor.metadata
    return "UINT8" if meta is not None and meta.input.dtype == "uint8" else "FP32"


def model_metadata(name: str, predictor: Predictor) -> dict:
    meta = predictor.metadata
    return {
        "name": name,
        "versions": ["1"],
        "platform": f"cifar-deploy/{predictor.kind}",
        "inputs": [{"name": "images", "datatype": input_datatype(predictor),
                    "shape": [-1, 32, 32, 3]}],  # fmt: skip
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {
            "class_names": list(meta.class_names if meta else CLASS_NAMES),
            "preprocessing": meta.preprocessing if meta else "raw RGB pixels 0..255, NHWC",
            "quantization": meta.quantization if meta else "none",
            "provider": predictor.provider,
        },
    }


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, np.ndarray]:
    """(request JSON, images array) from a V2 infer body, JSON or binary-extension."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise RequestError(f"{HEADER_LENGTH} must be an integer, received {header_length!r}")
        if not 0 < json_size <= len(body):
            raise RequestError(f"{HEADER_LENGTH} {json_size} does not fit a {len(body)}-byte body")
        head, binary = body[:json_size], body[json_size:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError("expected a JSON object with an 'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(f"expected exactly one input named 'images', received {len(inputs)}")
    return request, _tensor(inputs[0], binary)


def _tensor(spec: dict, binary: bytes) -> np.ndarray:
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if name != "images":
        raise RequestError(f"unknown input {name!r}; expected 'images'")
    if datatype not in ACCEPTED_DTYPES:
        raise RequestError(f"input datatype {datatype!r} is not accepted; expected UINT8 or FP32")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(d, int) for d in shape)
            or shape[1:] != [32, 32, 3] or shape[0] < 1):  # fmt: skip
        raise RequestError(f"expected shape [N, 32, 32, 3] with N >= 1, received {shape}")
    count = int(np.prod(shape))
    dtype = V2_DTYPES[datatype]
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * np.dtype(dtype).itemsize or size > len(binary):
            raise RequestError(
                f"binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * np.dtype(dtype).itemsize} bytes) or the {len(binary)} bytes sent"
            )
        array = np.frombuffer(binary[:size], dtype=dtype)
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise RequestError("expected 'data' (a flat or nested list) or binary data")
        try:
            array = np.asarray(data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise RequestError("'data' must hold numbers only") from None
        if array.size != count:
            raise RequestError(f"shape {shape} needs {count} elements, received {array.size}")
    return _check_values(array.reshape(shape), datatype)


def _check_values(array: np.ndarray, datatype: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise RequestError("pixel values must be finite; received NaN or infinity")
        if array.min() < 0 or array.max() > 255:
            raise RequestError(
                f"pixel values must lie in 0..255, received {array.min():g}..{array.max():g}"
            )
        if datatype == "UINT8":
            if not np.array_equal(array, np.round(array)):
                raise RequestError("UINT8 data must be whole numbers 0..255")
            return array.astype(np.uint8)
        return array.astype(np.float32)
    return array


def decode_image(data: bytes) -> np.ndarray:
    """A PNG or JPEG of any size -> uint8 (32, 32, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("the uploaded file is empty; expected a PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise RequestError(f"expected a PNG or JPEG image, received {img.format}")
            img.load()
            if img.width < 1 or img.height < 1:
                raise RequestError("the image decodes to nothing (zero width or height)")
            rgb = img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"not a decodable PNG or JPEG image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def top_k(probs: np.ndarray, k: int, class_names) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"label": class_names[i], "class_id": int(i), "probability": float(probs[i])}
            for i in order]  # fmt: skip


def _endpoint(path: str) -> str:
    """Metric label for a path: model names folded into ``{name}``."""
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}" + ("/infer" if path.endswith("/infer") else
                                      "/ready" if path.endswith("/ready") else "")  # fmt: skip
    return path


class Observe:
    """Pure ASGI middleware (Starlette's ``@app.middleware("http")`` costs a task and a stream
    copy per request): the payload limit from Content-Length, a JSON 500 instead of a bare error
    page, and request, latency and queue metrics."""

    def __init__(self, app, metrics: dict, batcher: DynamicBatcher, max_payload_bytes: int):
        self.app, self.m, self.batcher, self.limit = app, metrics, batcher, max_payload_bytes

    async def _json(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
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
                await self._json(tracking_send, 413, f"payload of {int(length):,} bytes exceeds "
                                                     f"the limit of {self.limit:,} bytes")  # fmt: skip
            else:
                await self.app(scope, receive, tracking_send)
        except Exception as exc:  # never a bare 500 page: a JSON error, and keep serving
            if not state["started"]:
                await self._json(tracking_send, 500, f"internal error: {type(exc).__name__}")
        finally:
            endpoint = _endpoint(scope["path"])
            self.m["requests"].labels(endpoint, str(state["status"])).inc()
            self.m["latency"].labels(endpoint).observe(time.perf_counter() - started)
            self.m["queue"].set(self.batcher.queue_depth)


def create_app(
    predictor: Predictor,
    name: str,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 2.0,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
):
    """The FastAPI application serving ``predictor`` as model ``name``."""
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry, m = _metrics()
    class_names = list(predictor.metadata.class_names if predictor.metadata else CLASS_NAMES)
    batcher = DynamicBatcher(predictor.predict, max_batch_size, max_queue_delay_ms,
                             on_batch=m["batch"].observe)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()  # in-flight requests finish before shutdown completes

    app = FastAPI(title="cifar-deploy", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    app.add_middleware(Observe, metrics=m, batcher=batcher, max_payload_bytes=max_payload_bytes)

    def check_model(model_name: str):
        if model_name != name:
            return error(404, f"unknown model {model_name!r}; this server serves {name!r}")
        return None

    async def read_body(request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_payload_bytes:
                raise RequestError(f"payload exceeds the limit of {max_payload_bytes:,} bytes", 413)
        return bytes(body)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "cifar-deploy", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{model_name}")
    async def metadata(model_name: str):
        return check_model(model_name) or model_metadata(name, predictor)

    @app.get("/v2/models/{model_name}/versions/{version}")
    async def metadata_version(model_name: str, version: str):
        return check_model(model_name) or model_metadata(name, predictor)

    @app.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str):
        return check_model(model_name) or {"name": name, "ready": True}

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request):
        if (missing := check_model(model_name)) is not None:
            return missing
        try:
            body = await read_body(request)
            req, images = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        except RequestError as exc:
            return error(exc.status, exc.message)
        probs = await batcher.submit(images)
        return _infer_response(req, name, probs)

    @app.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer_version(model_name: str, version: str, request: Request):
        return await infer(model_name, request)

    @app.post("/v1/classify")
    async def classify(request: Request, top: int = 3):
        try:
            if not 1 <= top <= 10:
                raise RequestError(f"top must be 1..10, received {top}")
            body = await read_body(request)
            image = decode_image(await _upload_bytes(request, body))
        except RequestError as exc:
            return error(exc.status, exc.message)
        probs = (await batcher.submit(image[None]))[0]
        return {"model_name": name, "predictions": top_k(probs, top, class_names)}

    @app.get("/metrics")
    async def metrics():
        m["queue"].set(batcher.queue_depth)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(404)
    async def not_found(request, exc):
        return error(404, f"no endpoint {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def not_allowed(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(422, f"invalid request: {exc.errors()[0].get('msg', 'validation error')}")

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


def _infer_response(req: dict, name: str, probs: np.ndarray):
    from fastapi.responses import JSONResponse, Response

    probs = np.ascontiguousarray(probs, dtype=np.float32)
    wanted = req.get("outputs") or [{"name": "probabilities"}]
    unknown = [o.get("name") if isinstance(o, dict) else o for o in wanted
               if not isinstance(o, dict) or o.get("name") != "probabilities"]  # fmt: skip
    if unknown:
        return JSONResponse({"error": f"unknown output {unknown[0]!r}; expected 'probabilities'"},
                            status_code=400)  # fmt: skip
    binary = bool((req.get("parameters") or {}).get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in wanted if isinstance(o, dict)
    )
    output = {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape)}
    head = {"model_name": name, "model_version": "1", "id": str(req.get("id") or uuid.uuid4())}
    if not binary:
        return JSONResponse({**head, "outputs": [{**output, "data": probs.reshape(-1).tolist()}]})
    raw = probs.tobytes()
    header = json.dumps({**head, "outputs": [{**output,
                                              "parameters": {"binary_data_size": len(raw)}}]})
    payload = header.encode() + raw
    return Response(payload, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header.encode()))})  # fmt: skip
