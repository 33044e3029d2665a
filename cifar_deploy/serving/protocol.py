"""The Open Inference Protocol (KServe V2) codec: request parsing, validation and response
encoding as pure functions of bytes and arrays, with no web framework in them.

Requests carry one input named ``images`` of shape ``[N, 32, 32, 3]`` and datatype ``UINT8`` or
``FP32``, as JSON ``data`` or through the binary tensor data extension (Triton's
``Inference-Header-Content-Length``); every problem is a :class:`RequestError` that says what was
received and what is expected.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from ..contract import CHANNELS, INPUT_NAME, MAX_SIDE, OUTPUT_NAME, Signature
from ..errors import RequestError
from ..runtime.predictors import Predictor

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
            {
                "name": INPUT_NAME,
                "datatype": input_datatype(predictor),
                "shape": [-1, *predictor.signature.image_shape],
            }
        ],
        "outputs": [
            {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, predictor.signature.classes]}
        ],
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
                "dims": list(predictor.signature.image_shape),
            }
        ],
        "output": [
            {"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [predictor.signature.classes]}
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": int(delay_ms * 1000)},
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": 1}],
        "parameters": {},
    }


MAX_BATCH_ROWS = 65_536  # images in one request; the payload limit binds long before this


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, np.ndarray]:
    """(request JSON, images array) from a V2 infer body, JSON or binary-extension. Every field
    is validated here, in one place (types, ranges, sizes computed with Python integers and
    bounded before numpy sees them), so any malformed request is a :class:`RequestError` that
    names the field. A UTF-8 byte order mark before the JSON is accepted (RFC 8259 lets a parser
    ignore it); numeric strings and booleans in ``data`` are refused, as Triton refuses them.
    The returned request JSON is shared between requests with the same binary-extension header
    (see :func:`_known_head`): read it, never change it."""
    if header_length is None:
        request, tensor = _parse_head(body, 0)
        return request, _images(tensor, b"")  # a binary layout with no bytes was refused
    try:
        json_size = int(header_length)
    except ValueError:
        raise RequestError(
            f"{HEADER_LENGTH} must be an integer, received {header_length[:40]!r}"
        ) from None
    if not 0 < json_size <= len(body):
        raise RequestError(f"{HEADER_LENGTH} {json_size} does not fit a {len(body)}-byte body")
    binary = memoryview(body)[json_size:]  # the tensor bytes, not copied
    request, tensor = _known_head(body[:json_size], len(binary))
    return request, _images(tensor, binary)


# Binary-extension JSON headers already validated: (header bytes, binary bytes) -> (request,
# tensor layout). A client sends the same header with every request of one shape, so most
# requests skip JSON parsing and validation; what depends on the tensor bytes (FP32 values) is
# still checked for each. Bounded: headers up to KNOWN_HEAD_BYTES, at most KNOWN_HEADS of them.
KNOWN_HEAD_BYTES = 2048
KNOWN_HEADS = 64
_known: dict[tuple[bytes, int], tuple[dict, BinaryTensor]] = {}


def _known_head(head: bytes, binary_size: int) -> tuple[dict, BinaryTensor | np.ndarray]:
    key = (head, binary_size)
    known = _known.get(key)
    if known is not None:
        return known
    request, tensor = _parse_head(head, binary_size)
    if isinstance(tensor, BinaryTensor) and len(head) <= KNOWN_HEAD_BYTES:
        if len(_known) >= KNOWN_HEADS:
            _known.clear()  # a client cycling through many headers: start over
        _known[key] = (request, tensor)
    return request, tensor


def _parse_head(head: bytes, binary_size: int) -> tuple[dict, BinaryTensor | np.ndarray]:
    """(request JSON, its tensor: a binary layout, or the images from JSON ``data``)."""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError("expected a JSON object with an 'inputs' list")
    _text(request.get("id"), "'id'", required=False)
    parameters = _object(request.get("parameters"), "'parameters'")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise RequestError("'parameters.binary_data_output' must be true or false")
    check_outputs(request)
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(
            f"expected exactly one input named {INPUT_NAME!r}, received {len(inputs)}"
        )
    return request, _tensor(inputs[0], binary_size)


@dataclass(frozen=True, slots=True)
class BinaryTensor:
    """A validated binary input: its datatype, shape and size in the bytes after the JSON."""

    datatype: str
    shape: tuple[int, ...]
    size: int

    def read(self, binary) -> np.ndarray:
        array = np.frombuffer(binary[: self.size], dtype=V2_DTYPES[self.datatype])
        return _check_values(array.reshape(self.shape), self.datatype)


def parse_tensor(spec: dict, binary) -> np.ndarray:
    """The images of one V2 input tensor (``spec``: its name, datatype, shape and ``data`` or
    ``parameters.binary_data_size``; ``binary``: the bytes after the JSON), checked."""
    return _images(_tensor(spec, len(binary)), binary)


def _images(tensor: BinaryTensor | np.ndarray, binary) -> np.ndarray:
    """A checked tensor's images: read from ``binary`` for a binary layout, else as parsed."""
    return tensor.read(binary) if isinstance(tensor, BinaryTensor) else tensor


def _tensor(spec: dict, binary_size: int) -> BinaryTensor | np.ndarray:
    """One V2 input tensor checked: the layout of its binary data, or its JSON ``data`` read."""
    name = _text(spec.get("name"), "input 'name'")
    if name != INPUT_NAME:
        raise RequestError(f"unknown input {name!r}; expected {INPUT_NAME!r}")
    datatype = _text(spec.get("datatype"), "input 'datatype'")
    if datatype not in ACCEPTED_DTYPES:
        raise RequestError(f"input datatype {datatype!r} is not accepted; expected UINT8 or FP32")
    shape = _shape(spec.get("shape"))
    count = math.prod(shape)  # Python integers: bounded by MAX_BATCH_ROWS, never overflows
    parameters = _object(spec.get("parameters"), "input 'parameters'")
    size = parameters.get("binary_data_size")
    if size is None:
        return _check_values(_numbers(spec.get("data"), count, shape).reshape(shape), datatype)
    size = _whole(size, "'binary_data_size'")
    expected = count * np.dtype(V2_DTYPES[datatype]).itemsize
    if size != expected or size > binary_size:
        raise RequestError(
            f"binary_data_size {size} does not match shape {shape} of {datatype} "
            f"({expected} bytes) or the {binary_size} bytes sent"
        )
    return BinaryTensor(datatype, tuple(shape), size)


def _shape(shape: object) -> list[int]:
    """``[N, H, W, 3]`` with 1 <= N <= MAX_BATCH_ROWS and 1 <= H, W <= MAX_SIDE, integers only
    (not booleans). Whether H and W are the model's is :func:`check_image_shape`'s to say."""
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(type(d) is int for d in shape)
        or shape[3] != CHANNELS
        or not (1 <= shape[1] <= MAX_SIDE and 1 <= shape[2] <= MAX_SIDE)
        or not 1 <= shape[0] <= MAX_BATCH_ROWS
    ):
        shown = shape if isinstance(shape, list) and len(str(shape)) < 80 else _kind(shape)
        raise RequestError(
            f"expected shape [N, H, W, 3] with N in 1..{MAX_BATCH_ROWS:,} and H, W in "
            f"1..{MAX_SIDE}, received {shown}"
        )
    return shape


def check_image_shape(images: np.ndarray, signature: Signature) -> np.ndarray:
    """The parsed images, when each has the model's own size; else the 400 that names it."""
    if images.shape[1:] != signature.image_shape:
        h, w, c = signature.image_shape
        raise RequestError(f"expected shape [N, {h}, {w}, {c}], received {list(images.shape)}")
    return images


def _flat(data: list):
    for value in data:
        if type(value) is list:
            yield from _flat(value)
        else:
            yield value


def _numbers(data: object, count: int, shape: list[int]) -> np.ndarray:
    """JSON ``data`` (flat, or nested as the shape) as float64, after checking in Python that it
    holds exactly ``count`` JSON numbers: no booleans, strings or nulls, nothing beyond float64."""
    if not isinstance(data, list):
        raise RequestError(
            f"expected 'data' (a flat or nested list) or binary data, received {_kind(data)}"
        )
    values = list(_flat(data))
    if len(values) != count:
        raise RequestError(f"shape {shape} needs {count} elements, received {len(values)}")
    odd = next((v for v in values if type(v) is not int and type(v) is not float), 0)
    if odd != 0:
        raise RequestError(f"'data' must hold numbers only, received {_kind(odd)}")
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        raise RequestError("'data' holds an integer too large for a pixel value") from None


def _text(value: object, where: str, required: bool = True) -> str | None:
    """A string field, which must be valid UTF-8 text (JSON allows unpaired surrogates)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{where} must be a string, received {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} is not valid UTF-8 text (an unpaired surrogate)") from None
    return value


def _object(value: object, where: str) -> dict:
    """An optional JSON object field (``parameters``): absent or null reads as {}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be a JSON object, received {_kind(value)}")
    return value


def _whole(value: object, where: str) -> int:
    """An integer field: a JSON integer, not a boolean and not a float."""
    if type(value) is not int:
        raise RequestError(f"{where} must be an integer, received {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """A received value's JSON type, for error messages (never the value: it may be huge)."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


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
    """``outputs``, when present, is a list asking only for ``probabilities`` (by name, or as
    ``{"name": ..., "parameters": {...}}``)."""
    outputs = request.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise RequestError(f"'outputs' must be a list, received {_kind(outputs)}")
    for wanted in outputs:
        if isinstance(wanted, dict):
            _object(wanted.get("parameters"), "output 'parameters'")
            name = wanted.get("name")
        else:
            name = wanted
        name = _text(name, "output 'name'")
        if name != OUTPUT_NAME:
            raise RequestError(f"unknown output {name!r}; expected {OUTPUT_NAME!r}")


@dataclass(slots=True)
class Encoded:
    """An encoded infer response as it goes on the wire: body bytes, content type and extra
    headers (lowercase names)."""

    body: bytes
    media_type: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
_HEADER_LENGTH_NAME = HEADER_LENGTH.lower().encode()


def encode_infer_response(request: dict, name: str, probs: np.ndarray) -> Encoded:
    """The V2 response: JSON ``data``, or binary when the request asked for binary output."""
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    wanted = [o for o in request.get("outputs") or [] if isinstance(o, dict)]
    binary = bool((request.get("parameters") or {}).get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in wanted
    )
    request_id = request.get("id") or None  # echoed when given; absent otherwise, as Triton
    if not binary:
        output = _output(probs.shape)
        body = {**_head(name, request_id), "outputs": [{**output, "data": probs.ravel().tolist()}]}
        return Encoded(json.dumps(body).encode(), JSON_TYPE)
    raw = probs.tobytes()
    if request_id is None:  # the usual case: the same header for every answer of this shape
        header = _binary_header(name, probs.shape)
    else:
        header = _binary_header.__wrapped__(name, probs.shape, request_id)
    return Encoded(header + raw, BINARY_TYPE, ((_HEADER_LENGTH_NAME, b"%d" % len(header)),))


def _head(name: str, request_id) -> dict:
    head = {"model_name": name, "model_version": MODEL_VERSION}
    if request_id is not None:
        head["id"] = request_id
    return head


def _output(shape: tuple[int, ...]) -> dict:
    return {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(shape)}


@functools.lru_cache(maxsize=64)
def _binary_header(name: str, shape: tuple[int, ...], request_id=None) -> bytes:
    """The JSON header of a binary answer (FP32 probabilities of ``shape``)."""
    size = math.prod(shape) * 4  # FP32 bytes
    output = {**_output(shape), "parameters": {"binary_data_size": size}}
    return json.dumps({**_head(name, request_id), "outputs": [output]}).encode()
