"""Specification of `export --format triton-python`: a python-backend model repository that a real
Triton (2.51, from the nvidia-pytriton pip bundle that ../shared/peers/setup.sh installs) loads
and serves with the same answers as the in-process predictor. Skipped, with the reason, where
that Triton is not installed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_deploy.export import ExportOptions, export_model
from cifar_deploy.runtime import load_predictor
from tests.helpers import CALIBRATION

PEERS = Path(os.environ.get("CIFAR_DEPLOY_PEERS", "/tmp/peers-env"))
TRITON = PEERS / "tritonserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_python") / "cnn"
    options = ExportOptions(calibration_images=CALIBRATION)
    (artifact,) = export_model(tiny_model, "triton-python", options, out)
    assert artifact.status == "ok", artifact.error
    return artifact.path


def test_the_repository_holds_the_int8_tflite_its_model_py_and_config(repository):
    model = repository / "cnn"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.py", "model.tflite"]
    config = (model / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "data_type: TYPE_UINT8" in config
    assert "max_batch_size: 64" in config and "dynamic_batching" in config
    compile((model / "1" / "model.py").read_text(), "model.py", "exec")  # valid Python


def test_verify_runs_what_triton_runs(repository, tiny_exports):
    ours = load_predictor(repository)
    tflite = load_predictor(tiny_exports[("tflite", "int8")].path)
    batch = np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    assert ours.provider.startswith("litert")
    np.testing.assert_allclose(ours.predict(batch), tflite.predict(batch), atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not TRITON.exists(),
    reason=f"real Triton not installed at {TRITON} (bash ../shared/peers/setup.sh installs it)",
)
def test_a_real_triton_loads_it_and_answers_like_the_predictor(repository):
    import tritonclient.http as httpclient

    http, grpc, metrics = free_port(), free_port(), free_port()
    # numpy < 2 and ai-edge-litert for Triton's python stub: the peers venv has them.
    site = subprocess.run(
        [str(PEERS / "venv/bin/python"), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = (repository.parent / "triton.log").open("w")
    proc = subprocess.Popen(
        [
            str(TRITON),
            f"--model-repository={repository}",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CIFAR_DEPLOY_PYTHON_PATH": site},
        start_new_session=True,  # the python stubs it starts are stopped with it
    )
    try:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{http}")
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if client.is_model_ready("cnn"):
                    break
            except Exception:
                pass
            time.sleep(1)
        assert proc.poll() is None and client.is_model_ready("cnn"), "Triton did not load it"
        batch = np.random.default_rng(7).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        tensor = httpclient.InferInput("images", [5, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(batch)
        out = client.infer("cnn", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(out, load_predictor(repository).predict(batch), atol=1e-6)
        assert client.get_model_config("cnn")["backend"] == "python"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        print((repository.parent / "triton.log").read_text()[-3000:])


def test_the_config_gives_each_of_n_instances_its_share_of_threads():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from cifar_deploy.export.triton_python import config_pbtxt

    text = config_pbtxt("cnn", "uint8", 64, 2000, threads=1, instances=2)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, config.instance_group[0].KIND_CPU)
    ]
    assert config.parameters["num_threads"].string_value == "1"
    default = text_format.Parse(config_pbtxt("cnn", "uint8", 64), model_config_pb2.ModelConfig())
    assert [g.count for g in default.instance_group] == [1]
