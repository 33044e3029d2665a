"""Specification of `--strategy multi-worker`: MultiWorkerMirroredStrategy over TF_CONFIG, tried
with two worker processes on localhost (a tiny model, a few steps)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.errors import InvalidOptionError
from cifar_deploy.training.distributed import Cluster, cluster_from_env
from tests.helpers import REPO


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def test_tf_config_names_the_workers_and_this_task():
    assert cluster_from_env({"TF_CONFIG": tf_config([1, 2], 1)}) == Cluster(workers=2, index=1)
    assert cluster_from_env({"TF_CONFIG": tf_config([1, 2], 0)}).chief


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG must be JSON"),
        (
            json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"index": 3, "type": "worker"}}),
            "0..0",
        ),
        (
            json.dumps(
                {"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "ps", "index": 0}}
            ),
            "only a cluster of workers",
        ),
    ],
)
def test_a_missing_or_bad_tf_config_is_one_clear_error(value, message):
    environ = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(InvalidOptionError, match=message):
        cluster_from_env(environ)


WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.test_trainer import tiny_config
    from cifar_deploy.training.trainer import train
    result = train(tiny_config(Path({root!r}), {data!r}, strategy="multi-worker", epochs=2))
    print(json.dumps({{"dir": str(result.run_dir), "info": result.info}}))
""")


@pytest.mark.slow
def test_two_workers_train_one_model_and_the_chief_writes_the_run(tmp_path, cifar_dir):
    ports = free_ports(2)
    script = WORKER.format(repo=str(REPO), root=str(tmp_path), data=str(cifar_dir))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CONFIG": tf_config(ports, i), "CUDA_VISIBLE_DEVICES": ""},
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    chief, worker = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    run = tmp_path / "runs" / "cnn"
    assert chief["dir"] == str(run) and worker["dir"] == str(run / "worker-1")
    for name in ("best.keras", "last.keras", "history.csv", "run.json"):
        assert (run / name).stat().st_size > 0, name
    info = json.loads((run / "run.json").read_text())
    assert info["workers"] == 2 and info["worker_index"] == 0 and info["status"] == "completed"
    assert info["strategy"] == "multi-worker" and info["replicas"] == 2
    assert info["epochs_run"] == 2 and info["steps_run"] == 2 * (108 // 32)  # global batches
    keras = _tf.keras()
    weights = [
        keras.models.load_model(d / "last.keras").get_weights() for d in (run, run / "worker-1")
    ]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
