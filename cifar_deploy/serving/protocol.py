"""The Open Inference Protocol (KServe V2) codec: request parsing, validation and response
encoding as pure functions of bytes and arrays, with no web framework in them.

Requests carry one input named ``images`` of shape ``[N, 32, 32, 3]`` and datatype ``UINT8`` or
``FP32``, as JSON ``data`` or through the binary tensor data extension (Triton's
``Inference-Header-Content-Length``); every problem is a :class:`RequestError` that says what was
received and what is expected.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..contract import INPUT_NAME, INPUT_SHAPE, NUM_CLASSES, OUTPUT_NAME
from ..errors import RequestError
from .runtimes import Predictor

HEADER_LENGTH = "Inference-Header-Content-Length"
V2_DTYPES = {
    "UINT8": np.uint8,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
}
ACCEPTED_DTYPES = ("UINT8", "FP32")
MODEL_VERSION = "1"


def input_datatype(predictor: Predictor) -> str:
    return "UINT8" if predictor.metadata.input.dtype == "uint8" else "FP32"


def model_metadata(name: str, predictor: Predictor) -> dict:
    """``GET /v2/models/{name}``: tensors, plus labels and preprocessing as parameters."""
    meta = predictor.metadata
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": f"cifar-deploy/{predictor.kind}",
        "inputs": [
            {"name": INPUT_NAME, "datatype": input_datatype(predictor), "shape": [-1, *INPUT_SHAPE]}
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
        "parameters": {
            "class_names": predictor.class_names,
            "preprocessing": meta.preprocessing,
            "quantization": meta.quantization,
            "provider": predictor.provider,
        },
    }


def model_config(name: str, predictor: Predictor, max_batch_size: int, delay_ms: float) -> dict:
    """``GET /v2/models/{name}/config``: the model's configuration as Triton's model
    configuration extension returns it (``ModelConfig`` in JSON), which ``perf_analyzer`` and
    other Triton tooling read before they send anything. Dimensions exclude the batch."""
    return {
        "name": name,
        "platform": "",
        "backend": f"cifar-deploy/{predictor.kind}",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": f"TYPE_{input_datatype(predictor)}",
                "format": "FORMAT_NHWC",
                "dims": list(INPUT_SHAPE),
            }
        ],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [NUM_CLASSES]}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(delay_ms * 1000)},
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": 1}],
        "parameters": {},
    }


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, np.ndarray]:
    """(request JSON, images array) from a V2 infer body, JSON or binary-extension."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise RequestError(
                f"{HEADER_LENGTH} must be an integer, received {header_length!r}"
            ) from None
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
        raise RequestError(
            f"expected exactly one input named {INPUT_NAME!r}, received {len(inputs)}"
        )
    return request, parse_tensor(inputs[0], binary)


def parse_tensor(spec: dict, binary: bytes) -> np.ndarray:
    """The images of one V2 input tensor (``spec``: its name, datatype, shape and ``data`` or
    ``parameters.binary_data_size``; ``binary``: the bytes after the JSON), checked."""
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if name != INPUT_NAME:
        raise RequestError(f"unknown input {name!r}; expected {INPUT_NAME!r}")
    if datatype not in ACCEPTED_DTYPES:
        raise RequestError(f"input datatype {datatype!r} is not accepted; expected UINT8 or FP32")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) for d in shape)
        or shape[1:] != list(INPUT_SHAPE)
        or shape[0] < 1
    ):
        raise RequestError(f"expected shape [N, 32, 32, 3] with N >= 1, received {shape}")
    count = int(np.prod(shape))
    dtype = V2_DTYPES[datatype]
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        expected = count * np.dtype(dtype).itemsize
        if size != expected or size > len(binary):
            raise RequestError(
                f"binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({expected} bytes) or the {len(binary)} bytes sent"
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


def check_outputs(request: dict) -> None:
    """Only ``probabilities`` may be asked for."""
    for wanted in request.get("outputs") or []:
        name = wanted.get("name") if isinstance(wanted, dict) else wanted
        if name != OUTPUT_NAME:
            raise RequestError(f"unknown output {name!r}; expected {OUTPUT_NAME!r}")


@dataclass
class Encoded:
    """An encoded infer response: body bytes, content type and extra headers."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def encode_infer_response(request: dict, name: str, probs: np.ndarray) -> Encoded:
    """The V2 response: JSON ``data``, or binary when the request asked for binary output."""
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    wanted = [o for o in request.get("outputs") or [] if isinstance(o, dict)]
    binary = bool((request.get("parameters") or {}).get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in wanted
    )
    output = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(probs.shape)}
    head = {
        "model_name": name,
        "model_version": MODEL_VERSION,
        "id": str(request.get("id") or uuid.uuid4()),
    }
    if not binary:
        body = {**head, "outputs": [{**output, "data": probs.reshape(-1).tolist()}]}
        return Encoded(json.dumps(body).encode(), "application/json")
    raw = probs.tobytes()
    header = json.dumps(
        {**head, "outputs": [{**output, "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    return Encoded(header + raw, "application/octet-stream", {HEADER_LENGTH: str(len(header))})
