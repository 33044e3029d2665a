"""Specification of `cifar-deploy predict`, `cifar-deploy serve` and the dynamic batcher."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from cifar_deploy.cli import app
from cifar_deploy.serving.batcher import DynamicBatcher

runner = CliRunner()


@pytest.fixture(scope="module")
def artifact(tiny_onnx):
    return tiny_onnx


def _image(path, fmt, size=(40, 30)):
    arr = np.random.default_rng(len(str(path))).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def test_predict_classifies_files_and_reports_bad_ones(artifact, tmp_path):
    png = _image(tmp_path / "a.png", "PNG")
    jpg = _image(tmp_path / "b.jpg", "JPEG", size=(300, 200))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    missing = tmp_path / "missing.jpg"
    result = runner.invoke(
        app,
        [
            "predict",
            str(artifact),
            str(png),
            str(junk),
            str(jpg),
            str(missing),
            "--top-k",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    records = {os.path.basename(r["file"]): r for r in json.loads(result.stdout)}
    assert len(records["a.png"]["predictions"]) == 2 and records["a.png"]["error"] is None
    assert (
        records["b.jpg"]["predictions"][0]["probability"]
        >= records["b.jpg"]["predictions"][1]["probability"]
    )
    assert "not a decodable PNG or JPEG" in records["junk.png"]["error"]
    assert records["missing.jpg"]["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "junk.png" in errors[0] and "missing.jpg" in errors[1]


def test_predict_all_good_exits_0_with_a_table(artifact, tmp_path):
    png = _image(tmp_path / "cat.png", "PNG")
    result = runner.invoke(app, ["predict", str(artifact), str(png)])
    assert result.exit_code == 0, result.output
    assert "cat.png" in result.stdout and "%" in result.stdout


def test_batcher_merges_requests_and_returns_each_its_rows():
    seen = []

    def predict(x):
        seen.append(len(x))
        return np.repeat(x[:, :1, 0, 0].astype(np.float32), 10, axis=1)  # row i -> its own id

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=8, max_queue_delay_ms=20)
        batcher.start()
        inputs = [np.full((1 + i % 2, 32, 32, 3), i, np.uint8) for i in range(10)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.stop()
        return inputs, outs

    inputs, outs = asyncio.run(main())
    for x, y in zip(inputs, outs):
        assert y.shape == (len(x), 10) and (y == x[0, 0, 0, 0]).all()
    assert max(seen) > 1 and max(seen) <= 8 and sum(seen) == sum(len(x) for x in inputs)


def test_a_lone_request_is_dispatched_without_waiting_for_the_queue_delay():
    seen = []

    def predict(x):
        seen.append(len(x))
        return np.zeros((len(x), 10), np.float32)

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=8, max_queue_delay_ms=60_000)
        batcher.start()
        # A minute of queue delay would time this out; an idle server answers at once.
        out = await asyncio.wait_for(batcher.submit(np.zeros((1, 32, 32, 3), np.uint8)), 10)
        await batcher.stop()
        return out

    assert asyncio.run(main()).shape == (1, 10) and seen == [1]


def test_the_batcher_expects_as_many_requests_as_were_lately_in_flight_together():
    batcher = DynamicBatcher(lambda x: x, max_batch_size=8, max_queue_delay_ms=2)
    assert batcher.expected_together() == 1  # no traffic yet: a first request goes at once
    for _ in range(3):  # three requests submitted, none answered yet
        batcher._in_flight += 1
        batcher._note_in_flight(0.0)
    batcher._in_flight = 0  # all answered: the peak is remembered
    batcher._note_in_flight(0.5)
    assert batcher.expected_together() == 3


def test_batcher_stop_finishes_queued_requests():
    async def main():
        batcher = DynamicBatcher(lambda x: np.zeros((len(x), 10), np.float32), 4, 1)
        batcher.start()
        tasks = [
            asyncio.ensure_future(batcher.submit(np.zeros((1, 32, 32, 3), np.uint8)))
            for _ in range(20)
        ]
        await asyncio.sleep(0)
        await batcher.stop()
        return [t.done() and not t.exception() for t in tasks]

    assert all(asyncio.run(main()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_starts_answers_and_stops_on_sigterm(artifact):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_deploy.cli", "serve", str(artifact), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        meta = requests.get(f"http://127.0.0.1:{port}/v2/models/cnn", timeout=5).json()
        assert meta["inputs"][0]["name"] == "images"
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
        r = requests.post(
            f"http://127.0.0.1:{port}/v1/classify",
            files={"file": ("red.png", buffer.getvalue())},
            timeout=10,
        )
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM, as servers should.
    assert code in (0, -signal.SIGTERM)
    assert b"Traceback" not in proc.stderr.read()
