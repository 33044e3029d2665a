"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), beside the
REST one: ``serve --grpc-port``.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig (Triton's, for
``perf_analyzer -i grpc``), RepositoryIndex and ModelInfer, with raw input contents (what
``tritonclient.grpc`` sends) or typed ``contents``. It runs on grpcio's asyncio server
(``grpc.aio``), on the REST server's event loop, and feeds the same per-model dynamic batchers;
requests are validated by the same code as REST, and its errors carry the same messages with
gRPC status codes (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED, 503 ->
UNAVAILABLE). A call the client cancels (a reset stream, a deadline) is withdrawn from its batch
when it has not run yet. The message classes are the ones ``tritonclient`` ships (generated from
Triton's ``grpc_service.proto``).

HTTP/2 itself (framing, flow control, HPACK, the limits a hostile client meets) is gRPC core's:
:func:`server_options` sets them, and ``tests/test_grpc_attacks.py`` holds them to account.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import numpy as np

from ..errors import RequestError
from .limits import RateLimitedLog, ServerLimits, log
from .protocol import INPUT_NAME, OUTPUT_NAME, check_outputs, parse_tensor

SERVICE = "inference.GRPCInferenceService"
StatusCode = grpc.StatusCode
# REST status -> gRPC status code.
STATUS_CODES = {
    400: StatusCode.INVALID_ARGUMENT,
    404: StatusCode.NOT_FOUND,
    413: StatusCode.RESOURCE_EXHAUSTED,
    503: StatusCode.UNAVAILABLE,
}
# Typed contents fields by V2 datatype (when a client sends no raw_input_contents).
CONTENTS_FIELDS = {"UINT8": "uint_contents", "FP32": "fp32_contents"}
MESSAGE_OVERHEAD = 2**16  # room for the message around the tensor bytes


def server_options(limits: ServerLimits, max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC core's channel arguments for the server: every limit a client meets before any
    handler runs. Each is checked against the installed grpcio by ``tests/test_grpc_attacks.py``
    (an argument core does not know is ignored without a word)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes + MESSAGE_OVERHEAD),
        ("grpc.max_send_message_length", max_message_bytes + MESSAGE_OVERHEAD),
        # streams one connection may have open; more are refused (RST_STREAM REFUSED_STREAM)
        ("grpc.max_concurrent_streams", limits.grpc_max_streams),
        # header blocks: a soft limit (calls over it fail) and a hard one (the connection)
        ("grpc.max_metadata_size", 16 * 2**10),
        ("grpc.absolute_max_metadata_size", 64 * 2**10),
        # connections: how many at once, how long a handshake and an idle one may last
        ("grpc.max_allowed_incoming_connections", limits.grpc_max_connections),
        ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.grpc_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(limits.grpc_max_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(limits.body_timeout_s * 1000)),
        # client pings: none without calls, at most one per 10 s, then GOAWAY
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # workers of serve --workers bind the same port
        ("grpc.so_reuseport", 1),
    ]


def _messages():
    from tritonclient.grpc import model_config_pb2, service_pb2

    return service_pb2, model_config_pb2


def request_images(request) -> np.ndarray:
    """The images of a ``ModelInferRequest``, checked as a REST request's are."""
    inputs = list(request.inputs)
    if len(inputs) != 1:
        raise RequestError(
            f"expected exactly one input named {INPUT_NAME!r}, received {len(inputs)}"
        )
    tensor = inputs[0]
    spec = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        spec["parameters"] = {"binary_data_size": len(raw)}
        return parse_tensor(spec, raw)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    spec["data"] = list(getattr(tensor.contents, field)) if field else None
    return parse_tensor(spec, b"")


class Failed(Exception):
    """A call's end with a status other than OK, and its message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def service_handler(repository, count: Callable | None = None) -> grpc.GenericRpcHandler:
    """The service's methods for ``repository`` (the REST server's :class:`ModelRepository`) as
    one grpc.aio handler; a bad request ends with the REST message and the matching status
    code. ``count(endpoint, model, status, seconds)`` (the REST server's
    :meth:`~.server.ServerApp.count`) is told of every call: the method's path, the model the
    request names, the gRPC status code's name (the ``status`` label) and the seconds it took."""
    from google.protobuf import json_format

    pb, config_pb = _messages()

    def fail(exc: RequestError) -> Failed:
        return Failed(STATUS_CODES.get(exc.status, StatusCode.INVALID_ARGUMENT), exc.message)

    async def server_live(request):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(request):
        return pb.ServerReadyResponse(ready=bool(repository.models))

    async def server_metadata(request):
        return pb.ServerMetadataResponse(**await repository.server_metadata())

    async def model_ready(request):
        try:
            repository.model(request.name, request.version or None)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(request):
        try:
            meta = repository.model_metadata(request.name, request.version or None)
        except RequestError as exc:
            raise fail(exc) from None
        tensors = (
            [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=tensors[0],
            outputs=tensors[1],
        )

    async def model_config(request):
        try:
            config = repository.model_configuration(request.name, request.version or None)
        except RequestError as exc:
            raise fail(exc) from None
        message = json_format.ParseDict(config, config_pb.ModelConfig())
        return pb.ModelConfigResponse(config=message)

    async def repository_index(request):
        rows = await repository.index()
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    async def model_infer(request):
        try:
            model = repository.model(request.model_name, request.model_version or None)
            if request.ByteSize() > repository.limit:
                raise RequestError(f"payload exceeds the limit of {repository.limit:,} bytes", 413)
            images = request_images(request)
            check_outputs({"outputs": [{"name": o.name} for o in request.outputs]})
            repository.grpc_calls += 1  # batches wait for gRPC calls (see more_possible)
            try:
                probs = await repository.predict(model, images)
            finally:
                repository.grpc_calls -= 1
        except RequestError as exc:
            raise fail(exc) from None
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        output = pb.ModelInferResponse.InferOutputTensor(
            name=OUTPUT_NAME, datatype="FP32", shape=list(probs.shape)
        )
        return pb.ModelInferResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=[output],
            raw_output_contents=[probs.tobytes()],
        )

    def method(path, request_type, handler):
        async def call(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started, model, code = time.perf_counter(), "", StatusCode.INTERNAL
            try:
                try:
                    request = request_type.FromString(data)
                except Exception:
                    raise Failed(
                        StatusCode.INVALID_ARGUMENT, f"not a valid {request_type.__name__}"
                    ) from None
                # ModelInfer names its model in model_name, the model queries in name
                model = getattr(request, "model_name", None) or getattr(request, "name", "")
                response = (await handler(request)).SerializeToString()
                code = StatusCode.OK
                return response
            except Failed as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except BaseException as exc:
                # CancelledError: the client reset the stream or its deadline passed
                code = (
                    StatusCode.CANCELLED
                    if isinstance(exc, asyncio.CancelledError)
                    else StatusCode.INTERNAL
                )
                raise
            finally:
                if count is not None:
                    count(path, model, code.name, time.perf_counter() - started)

        # bytes in, bytes out: the method parses (and counts a bad message as its own call)
        return grpc.unary_unary_rpc_method_handler(call)

    table = {
        "ServerLive": (pb.ServerLiveRequest, server_live),
        "ServerReady": (pb.ServerReadyRequest, server_ready),
        "ServerMetadata": (pb.ServerMetadataRequest, server_metadata),
        "ModelReady": (pb.ModelReadyRequest, model_ready),
        "ModelMetadata": (pb.ModelMetadataRequest, model_metadata),
        "ModelConfig": (pb.ModelConfigRequest, model_config),
        "RepositoryIndex": (pb.RepositoryIndexRequest, repository_index),
        "ModelInfer": (pb.ModelInferRequest, model_infer),
    }
    methods = {name: method(f"/{SERVICE}/{name}", *pair) for name, pair in table.items()}
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def open_connections(port: int) -> int:
    """This process's established TCP connections on local ``port`` (psutil, from /proc)."""
    import psutil

    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def watch_connection_cap(port: int, cap: int, every_s: float = 1.0, interval_s=60.0):
    """gRPC core refuses connections beyond ``grpc.max_allowed_incoming_connections`` without
    a word: this task counts the port's open connections every ``every_s`` seconds and, while
    they are at the cap, logs one line per ``interval_s`` saying so. Runs until cancelled."""
    lines = RateLimitedLog(log, interval_s)
    while True:
        await asyncio.sleep(every_s)
        try:
            count = await asyncio.to_thread(open_connections, port)
        except Exception as exc:  # noqa: BLE001 - /proc read races with closing sockets
            log.debug("gRPC connection count failed: %s", exc)
            continue
        if count >= cap:
            lines.warning(
                f"gRPC: {count} connections are open on port {port}, the limit "
                f"(--grpc-max-connections {cap}): new ones are refused"
            )


async def start_grpc(
    repository,
    host: str,
    port: int,
    max_message_bytes: int,
    limits: ServerLimits | None = None,
    count=None,
    sock=None,
) -> grpc.aio.Server:
    """A started grpc.aio server on ``host:port`` (``port`` 0: a free one, then the server's
    ``bound_port``); the caller stops it. ``count`` records each call in the request metrics
    (see :func:`service_handler`). ``sock``: the socket ``serve --workers`` reserved this port
    with (bound with ``SO_REUSEPORT``, never listening); it is closed once gRPC core has bound
    the same port."""
    limits = limits or ServerLimits()
    server = grpc.aio.server(
        options=server_options(limits, max_message_bytes),
        maximum_concurrent_rpcs=limits.grpc_max_calls,
    )
    server.add_generic_rpc_handlers((service_handler(repository, count),))
    address = f"[{host}]" if ":" in host else host
    bound = server.add_insecure_port(f"{address}:{port}")
    if bound == 0:
        from ..errors import InvalidOptionError

        raise InvalidOptionError(f"cannot listen for gRPC on {host}:{port} (in use?)")
    await server.start()
    if sock is not None:
        sock.close()
    server.bound_port = bound
    server.cap_watch = asyncio.create_task(watch_connection_cap(bound, limits.grpc_max_connections))
    return server
