"""Specification: every inference request, however malformed, is parsed or refused with the
project's :class:`RequestError` (a 4xx naming the field), never another exception. Property-based
(hypothesis) on the parser; a sample of the same bodies sent to a live server sees only 200 and
4xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifar_deploy.errors import RequestError
from cifar_deploy.serving.protocol import MAX_BATCH_ROWS, parse_infer_request
from tests.helpers import serving

# Any JSON value: huge integers, non-finite-free floats, text with unpaired surrogates, nesting.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None), max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)

# Where a hostile value goes in an otherwise valid request.
FIELDS = [
    ("id",),
    ("parameters",),
    ("parameters", "binary_data_output"),
    ("outputs",),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "data"),
    ("inputs", 0, "data", 0),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "parameters", "binary_data_size"),
]


def valid_request() -> dict:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [7] * 3072}
    return {"id": "r1", "inputs": [tensor], "outputs": [{"name": "probabilities"}]}


def with_value(path: tuple, value) -> dict:
    request = valid_request()
    node = request
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[path[-1]] = value
    return request


def parses_or_refuses(body: bytes, header_length: str | None = None) -> None:
    try:
        _, images = parse_infer_request(body, header_length)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        assert images.shape[1:] == (32, 32, 3) and images.dtype in (np.uint8, np.float32)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_json_value_in_any_field_parses_or_is_a_request_error(field, value):
    parses_or_refuses(json.dumps(with_value(field, value)).encode())


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200), header_length=st.none() | st.text(max_size=6))
def test_any_bytes_and_header_length_parse_or_are_a_request_error(body, header_length):
    parses_or_refuses(body, header_length)


# The 16 request variants of issue #14 that were answered 500, and the decided edge cases.
MALFORMED = {
    "nested 100,000 deep": b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "batch whose element count overflows int64": with_value(
        ("inputs", 0, "shape"), [2**62, 32, 32, 3]
    ),
    "a 400-digit integer in data": with_value(("inputs", 0, "data", 0), 10**400),
    "unpaired surrogate in the input name": with_value(("inputs", 0, "name"), "\ud800"),
    "unpaired surrogate in the id": with_value(("id",), "\udfff"),
    "input parameters a list": with_value(("inputs", 0, "parameters"), [1]),
    "request parameters a list": with_value(("parameters",), [1]),
    "outputs a string": with_value(("outputs",), "probabilities"),
    "outputs an object": with_value(("outputs",), {"name": "probabilities"}),
    "output parameters a string": with_value(
        ("outputs",), [{"name": "probabilities", "parameters": "x"}]
    ),
    "boolean batch size": with_value(("inputs", 0, "shape"), [True, 32, 32, 3]),
    "float byte count": with_value(("inputs", 0, "parameters", "binary_data_size"), 3072.0),
    "numeric strings in data (refused, as Triton does)": with_value(
        ("inputs", 0, "data"), ["1"] * 3072
    ),
    "booleans in data (refused, as Triton does)": with_value(("inputs", 0, "data"), [True] * 3072),
    "binary_data_output a string": with_value(("parameters", "binary_data_output"), "yes"),
    "id a number": with_value(("id",), 5),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_reported_malformed_request_is_a_400_naming_the_problem(case):
    body = MALFORMED[case]
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as caught:
        parse_infer_request(body, None)
    assert caught.value.status == 400
    assert len(caught.value.message) < 200  # one line, never the (possibly huge) value itself


def test_a_utf8_byte_order_mark_before_the_json_is_accepted():
    body = b"\xef\xbb\xbf" + json.dumps(valid_request()).encode()
    _, images = parse_infer_request(body, None)
    assert images.shape == (1, 32, 32, 3) and int(images[0, 0, 0, 0]) == 7


def test_the_batch_bound_is_checked_before_any_allocation():
    body = json.dumps(with_value(("inputs", 0, "shape"), [MAX_BATCH_ROWS + 1, 32, 32, 3]))
    with pytest.raises(RequestError, match="N in 1..65,536"):
        parse_infer_request(body.encode(), None)


def binary_body(pixels: np.ndarray, datatype: str, request_id: str = "r1") -> tuple[bytes, str]:
    raw = pixels.tobytes()
    tensor = {"name": "images", "datatype": datatype, "shape": list(pixels.shape)}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"id": request_id, "inputs": [tensor]}).encode()
    return header + raw, str(len(header))


def test_a_binary_header_seen_before_is_not_reparsed_but_each_requests_values_are_checked():
    pixels = np.full((2, 32, 32, 3), 7.0, np.float32)
    first = parse_infer_request(*binary_body(pixels, "FP32"))
    pixels[1, 0, 0, 0] = np.nan  # the same header, other values
    with pytest.raises(RequestError, match="finite"):
        parse_infer_request(*binary_body(pixels, "FP32"))
    pixels[1, 0, 0, 0] = 300.0
    with pytest.raises(RequestError, match=r"0\.\.255"):
        parse_infer_request(*binary_body(pixels, "FP32"))
    body, length = binary_body(pixels[:1], "FP32")
    short = body[: int(length)] + body[int(length) : -4]  # the header promises 4 bytes more
    with pytest.raises(RequestError, match="binary_data_size"):
        parse_infer_request(short, length)
    pixels[1, 0, 0, 0] = 9.0
    request, images = parse_infer_request(*binary_body(pixels, "FP32"))
    assert request is first[0]  # the header's parse was kept
    assert images[1, 0, 0, 0] == 9.0 and images[0, 0, 0, 0] == 7.0  # the values were read


def test_the_kept_binary_headers_are_bounded():
    from cifar_deploy.serving import protocol

    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    for n in range(protocol.KNOWN_HEADS * 3):
        parse_infer_request(*binary_body(pixels, "UINT8", request_id=f"request {n}"))
        assert len(protocol._known) <= protocol.KNOWN_HEADS


@pytest.fixture(scope="module")
def server(tiny_onnx):
    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    app = build_server_app(load_predictor(tiny_onnx), "cnn", max_queue_delay_ms=1)
    with serving(app) as address:
        yield address


def test_a_live_server_answers_every_malformed_variant_with_a_json_4xx(server):
    url = f"http://{server}/v2/models/cnn/infer"
    statuses = {}
    for case, body in MALFORMED.items():
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = requests.post(url, data=body, timeout=30)
        statuses[case] = reply.status_code
        assert "error" in reply.json(), case
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    valid = requests.post(url, data=json.dumps(valid_request()), timeout=30)
    assert valid.status_code == 200 and len(valid.json()["outputs"][0]["data"]) == 10


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_a_live_server_answers_hostile_requests_with_200_or_4xx(server, field, value):
    body = json.dumps(with_value(field, value)).encode()
    reply = requests.post(f"http://{server}/v2/models/cnn/infer", data=body, timeout=30)
    assert reply.status_code == 200 or 400 <= reply.status_code < 500, reply.text


def test_a_malformed_content_length_gets_the_json_error_shape(server):
    import socket

    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}"
        )
        reply = conn.recv(65536)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head.lower()
    assert "error" in json.loads(body)
