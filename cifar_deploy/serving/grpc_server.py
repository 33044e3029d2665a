"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), beside the
REST one: ``serve --grpc-port``.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig (Triton's, for
``perf_analyzer -i grpc``), RepositoryIndex and ModelInfer, with raw input contents (what
``tritonclient.grpc`` sends) or typed ``contents``. It runs on the REST server's event loop
(over :mod:`.grpc_wire`, this project's HTTP/2 carrier for unary gRPC calls) and feeds the same
per-model dynamic batchers; requests are validated by the same code as REST, and
its errors carry the same messages with gRPC status codes (400 -> INVALID_ARGUMENT, 404 ->
NOT_FOUND, 413 -> RESOURCE_EXHAUSTED). The message classes are the ones ``tritonclient`` ships
(generated from Triton's ``grpc_service.proto``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import RequestError
from .grpc_wire import (
    CODE_NAMES,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OK,
    RESOURCE_EXHAUSTED,
    GrpcError,
    GrpcServer,
)
from .protocol import INPUT_NAME, OUTPUT_NAME, check_image_shape, check_outputs, parse_tensor

SERVICE = "inference.GRPCInferenceService"
# REST status -> gRPC status code.
STATUS_CODES = {400: INVALID_ARGUMENT, 404: NOT_FOUND, 413: RESOURCE_EXHAUSTED}
# Typed contents fields by V2 datatype (when a client sends no raw_input_contents).
CONTENTS_FIELDS = {"UINT8": "uint_contents", "FP32": "fp32_contents"}


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


def service_methods(repository, count: Callable | None = None) -> dict:
    """``{"/inference.GRPCInferenceService/Method": async (request bytes) -> response bytes}``
    for ``repository`` (the REST server's :class:`Repository`); a bad request raises
    :class:`~.grpc_wire.GrpcError` with the REST message and the matching status code.
    ``count(endpoint, model, status, seconds)`` (the REST server's
    :meth:`~.server.Observe.count`) is told of every call: the method's path, the model the
    request names, the gRPC status code's name (the ``status`` label) and the seconds it took."""
    from google.protobuf import json_format

    pb, config_pb = _messages()

    def fail(exc: RequestError) -> GrpcError:
        return GrpcError(STATUS_CODES.get(exc.status, INVALID_ARGUMENT), exc.message)

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
            images = check_image_shape(request_images(request), model.predictor.signature)
            check_outputs({"outputs": [{"name": o.name} for o in request.outputs]})
        except RequestError as exc:
            raise fail(exc) from None
        repository.grpc_calls += 1  # batches wait for gRPC calls (see more_possible)
        try:
            probs = await model.batcher.submit(images)
        finally:
            repository.grpc_calls -= 1
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
        async def call(data: bytes) -> bytes:
            started, model, code = time.perf_counter(), "", INTERNAL
            try:
                try:
                    request = request_type.FromString(data)
                except Exception:
                    raise GrpcError(INTERNAL, f"not a valid {request_type.__name__}") from None
                # ModelInfer names its model in model_name, the model queries in name
                model = getattr(request, "model_name", None) or getattr(request, "name", "")
                response = (await handler(request)).SerializeToString()
                code = OK
                return response
            except GrpcError as exc:
                code = exc.code
                raise
            finally:
                if count is not None:
                    count(path, model, CODE_NAMES[code], time.perf_counter() - started)

        return call

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
    paths = {name: f"/{SERVICE}/{name}" for name in table}
    return {paths[name]: method(paths[name], *pair) for name, pair in table.items()}


async def start_grpc(
    repository, host: str, port: int, max_message_bytes: int, budget=None, count=None, sock=None
):
    """A started gRPC server (:class:`~.grpc_wire.GrpcServer`) on ``host:port``; the caller
    stops it. ``port`` 0 picks a free port (``server.bound_port``). ``budget`` (the REST
    server's :class:`~.limits.BodyBudget`) caps the bytes of partly received requests across
    both protocols; ``count`` records each call in the request metrics (see
    :func:`service_methods`). ``sock``: an already listening socket to serve instead."""
    limit = max_message_bytes + 2**16  # room for the message around the tensor bytes
    server = GrpcServer(service_methods(repository, count), limit, budget)
    return await server.start(host, port, sock)
