"""Specification of `serve --workers N`: N processes share the HTTP and gRPC ports, answer as the
predictor does, /metrics sums every worker, SIGTERM stops them all, a worker that dies stops the
rest, and a model that cannot load fails the start with its own message."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from cifar_deploy.errors import InvalidOptionError
from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.workers import reuseport_sockets


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _workers(pid: int) -> list[int]:
    """The worker processes among ``pid``'s children (multiprocessing also starts a resource
    tracker)."""
    found = []
    for kid in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                found.append(kid)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(artifact, tmp_path, *extra) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "cifar_deploy.cli", "serve", str(artifact), "--port"]
    cmd += [str(http_port), "--grpc-port", str(grpc_port), "--workers", "2", "--threads", "1"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        cmd + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    return proc, http_port, grpc_port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, port: int) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
                # every worker announces before the supervisor says how many serve
                if len(_workers(proc.pid)) == 2:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("serve --workers 2 did not become ready")


def _infer_body(image: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 32, 32, 3],
                "datatype": "UINT8",
                "data": image.ravel().tolist(),
            }
        ]
    }


def _counted(metrics: str, endpoint: str, status: str) -> float:
    labels = f'endpoint="{endpoint}",model="cnn",status="{status}"'
    pattern = rf"cifar_requests_total\{{{re.escape(labels)}\}} (\S+)"
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def int8(tiny_exports) -> Path:
    return tiny_exports[("tflite", "int8")].path


@pytest.mark.slow
def test_two_workers_answer_like_the_predictor_sum_their_metrics_and_stop_on_sigterm(
    int8, tmp_path
):
    images = np.random.default_rng(3).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    expected = load_predictor(int8, threads=1).predict(images)
    proc, port, grpc_port = _start(int8, tmp_path)
    try:
        _wait_ready(proc, port)
        workers = _workers(proc.pid)
        assert len([w for w in workers if _alive(w)]) == 2
        url = f"http://127.0.0.1:{port}/v2/models/cnn/infer"
        for image, want in zip(images, expected):  # each request on a connection of its own
            with requests.Session() as fresh:
                r = fresh.post(url, json=_infer_body(image), timeout=10)
            assert r.status_code == 200, r.text
            got = np.array(r.json()["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(got, want, atol=1e-6)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = grpcclient.InferInput("images", [3, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(images[:3])
        answer = client.infer("cnn", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, expected[:3], atol=1e-6)
        client.close()
        # Whichever worker answers the scrape, it counts what both served.
        for _ in range(4):
            with requests.Session() as fresh:
                metrics = fresh.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert _counted(metrics, "/v2/models/{name}/infer", "200") == 12
            assert _counted(metrics, "/inference.GRPCInferenceService/ModelInfer", "OK") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert code == 0, err
    assert "Traceback" not in err
    assert "2 worker processes" in err and "as 'cnn'" in err
    assert not any(_alive(w) for w in workers)
    assert not list(tmp_path.glob("cifar-deploy-metrics.*"))  # the metrics folder is removed
    with socket.socket() as s:  # nothing listens on the port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past closed connections
        s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_others_with_a_one_line_error(int8, tmp_path):
    proc, port, _ = _start(int8, tmp_path)
    try:
        _wait_ready(proc, port)
        first, second = sorted(_workers(proc.pid))
        os.kill(first, signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 1
    assert f"(pid {first}) exited with code -9 while serving; stopped the other 1" in err
    assert "Traceback" not in err
    assert not _alive(second)


def test_a_model_that_cannot_load_fails_the_start_with_the_same_message(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    single = subprocess.run(
        [sys.executable, "-m", "cifar_deploy.cli", "serve", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    proc, _, _ = _start(bad, tmp_path)
    code = proc.wait(timeout=90)
    err = proc.stderr.read()
    assert code == single.returncode == 2
    assert err.strip() and err.strip() == single.stderr.strip()
    assert "Traceback" not in err
    assert not _children(proc.pid)


def test_reuseport_sockets_share_one_port_and_a_taken_port_is_a_clear_error():
    sockets = reuseport_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and ports != {0}
        sockets[1].listen()  # a worker that serves
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass
    finally:
        for s in sockets:
            s.close()
    with socket.socket() as taken:  # a plain listener (no SO_REUSEPORT) owns the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidOptionError, match=rf"cannot listen on 127.0.0.1:{port}"):
            reuseport_sockets("127.0.0.1", port, 2)
