"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), beside the
REST one: ``serve --grpc-port``.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig (Triton's, for
``perf_analyzer -i grpc``), RepositoryIndex and ModelInfer, with raw input contents (what
``tritonclient.grpc`` sends) or typed ``contents``. It runs on the REST server's event loop and
feeds the same per-model dynamic batchers; requests are validated by the same code as REST, and
its errors carry the same messages with gRPC status codes (400 -> INVALID_ARGUMENT, 404 ->
NOT_FOUND, 413 -> RESOURCE_EXHAUSTED). The message classes are the ones ``tritonclient`` ships
(generated from Triton's ``grpc_service.proto``).
"""

from __future__ import annotations

import numpy as np

from ..errors import RequestError
from .protocol import INPUT_NAME, OUTPUT_NAME, check_outputs, parse_tensor

STATUS_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED"}
# Typed contents fields by V2 datatype (when a client sends no raw_input_contents).
CONTENTS_FIELDS = {"UINT8": "uint_contents", "FP32": "fp32_contents"}


def _messages():
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    return service_pb2, service_pb2_grpc, model_config_pb2


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


def make_servicer(repository):
    """The servicer for ``repository`` (the REST server's :class:`Repository`)."""
    import grpc
    from google.protobuf import json_format

    pb, pb_grpc, config_pb = _messages()

    async def abort(context, exc: RequestError):
        code = getattr(grpc.StatusCode, STATUS_CODES.get(exc.status, "INVALID_ARGUMENT"))
        await context.abort(code, exc.message)

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=bool(repository.models))

        async def ServerMetadata(self, request, context):
            meta = await repository.server_metadata()
            return pb.ServerMetadataResponse(**meta)

        async def ModelReady(self, request, context):
            try:
                repository.model(request.name, request.version or None)
            except RequestError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        async def ModelMetadata(self, request, context):
            try:
                meta = repository.model_metadata(request.name, request.version or None)
            except RequestError as exc:
                return await abort(context, exc)
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

        async def ModelConfig(self, request, context):
            try:
                config = repository.model_configuration(request.name, request.version or None)
            except RequestError as exc:
                return await abort(context, exc)
            message = json_format.ParseDict(config, config_pb.ModelConfig())
            return pb.ModelConfigResponse(config=message)

        async def RepositoryIndex(self, request, context):
            rows = await repository.index()
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
            )

        async def ModelInfer(self, request, context):
            try:
                model = repository.model(request.model_name, request.model_version or None)
                if request.ByteSize() > repository.limit:
                    raise RequestError(
                        f"payload exceeds the limit of {repository.limit:,} bytes", 413
                    )
                images = request_images(request)
                check_outputs({"outputs": [{"name": o.name} for o in request.outputs]})
            except RequestError as exc:
                return await abort(context, exc)
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

    return Servicer()


async def start_grpc(repository, host: str, port: int, max_message_bytes: int):
    """A started ``grpc.aio`` server on ``host:port``; the caller stops it. ``port`` 0 picks a
    free port (``server.bound_port``)."""
    import grpc

    _, pb_grpc, _ = _messages()
    limit = max_message_bytes + 2**16  # room for the message around the tensor bytes
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(make_servicer(repository), server)
    server.bound_port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
