"""Issue #14 figures: the hostile and clumsy-user cases, run against a checkout of cifar-deploy
(this one, or an older one for "before"), one fresh server or process per case.

Server (one LiteRT artifact, loopback, the server's open-file limit set to 1,024 as on a usual
machine): an image bomb (a 3 KB JPEG declaring 12000 x 12000) alone and ten at once beside a
health check; 40 stalled uploads of 8 MB minus one byte; 1,100 idle connections, then a health
check; 20,000 unknown paths, then a /metrics scrape; the 16 malformed request variants.
Peak server memory is sampled every 10 ms. CLI: bad option values, hostile data files and
malformed sidecars, each in its own process; a case holds when it ends in exit 0 or 2 with no
traceback (and, for the server, a 4xx and no freeze).

    python benchmarks/hardening.py --root . --artifact exports/cnn/cnn_int8.tflite [--json F]
    python benchmarks/hardening.py --root /tmp/before ...    # an older checkout, same venv
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests' hostile inputs, reused as they are

from serve_peers import cpu_name, free_port  # noqa: E402

from tests.test_hardening_artifacts import MALFORMED_SIDECARS, _malformed  # noqa: E402
from tests.test_hardening_requests import MALFORMED  # noqa: E402
from tests.test_hardening_server import bomb_jpeg  # noqa: E402

# Runs the CLI of the checkout at ROOT (argv[1]) even though this venv has an editable install
# of another checkout: that install's import finder is dropped first.
BOOT = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path.insert(0, sys.argv.pop(1)); from cifar_deploy.cli import main; "
    "sys.argv[0] = 'cifar-deploy'; main()"
)


def cli(root: Path, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BOOT, str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def held(result: subprocess.CompletedProcess) -> bool:
    """Exit 0 or 2, no traceback."""
    return result.returncode in (0, 2) and "Traceback" not in result.stderr


class Server:
    """``serve ARTIFACT`` of a checkout in a subprocess with a 1,024 open-file limit; its peak
    resident memory sampled every 10 ms while ``watch`` is on."""

    def __init__(self, root: Path, artifact: Path):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()

        def limit_files():
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                BOOT,
                str(root),
                "serve",
                str(artifact),
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=self.log,
            preexec_fn=limit_files,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start: " + self.log_text()[-2000:])
        self.ps = psutil.Process(self.process.pid)
        self.peak, self._watching = 0, False

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def watch(self):
        self.peak, self._watching = self.rss_mb(), True

        def sample():
            while self._watching:
                self.peak = max(self.peak, self.rss_mb())
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()

    def unwatch(self) -> float:
        self._watching = False
        time.sleep(0.02)
        return round(self.peak, 1)

    def log_bytes(self) -> int:
        return self.log.tell()

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def image_bomb(server: Server) -> dict:
    bomb = bomb_jpeg()
    base = server.rss_mb()
    server.watch()
    started = time.perf_counter()
    one = requests.post(server.url + "/v1/classify", data=bomb, timeout=120)
    alone_s = time.perf_counter() - started
    with ThreadPoolExecutor(11) as pool:
        bombs = [
            pool.submit(requests.post, server.url + "/v1/classify", data=bomb, timeout=120)
            for _ in range(10)
        ]
        time.sleep(0.05)
        started = time.perf_counter()
        health = requests.get(server.url + "/v2/health/live", timeout=120)
        health_s = time.perf_counter() - started
        statuses = sorted({f.result().status_code for f in bombs})
    return {
        "bomb_bytes": len(bomb),
        "status": one.status_code,
        "seconds": round(alone_s, 3),
        "ten_at_once_statuses": statuses,
        "health_check_beside_ten_s": round(health_s, 3),
        "health_status": health.status_code,
        "rss_before_mb": round(base, 1),
        "rss_peak_mb": server.unwatch(),
    }


def stalled_uploads(server: Server, clients: int = 40) -> dict:
    size = 8 * 2**20
    head = (
        f"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    base = server.rss_mb()
    server.watch()
    sockets = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(10)
        try:
            s.sendall(head + b" " * (size - 1))
        except OSError:
            pass  # refused early (503) and closed
        sockets.append(s)
    time.sleep(2)
    held_mb = server.rss_mb() - base
    started = time.perf_counter()
    deadline = time.monotonic() + 45  # seconds for all of them: past the 30 s body timeout
    answered = []
    for s in sockets:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            answered.append(s.recv(200).split(b"\r\n")[0].decode() or "closed")
        except TimeoutError:
            answered.append("no answer in 45 s")
        except OSError as exc:
            answered.append(type(exc).__name__)
    waited = time.perf_counter() - started
    for s in sockets:
        s.close()
    time.sleep(1)
    return {
        "clients": clients,
        "held_after_2s_mb": round(held_mb, 1),
        "rss_peak_mb": server.unwatch(),
        "rss_after_mb": round(server.rss_mb(), 1),
        "answers": {a: answered.count(a) for a in sorted(set(answered))},
        "seconds_until_answered": round(waited, 1),
    }


def idle_connections(server: Server, count: int = 1100) -> dict:
    log_before = server.log_bytes()
    opened = []
    for _ in range(count):
        try:
            opened.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        except OSError:
            break
    time.sleep(1)
    started = time.perf_counter()
    try:
        status = requests.get(server.url + "/v2/health/live", timeout=10).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    health_s = time.perf_counter() - started
    time.sleep(5)
    log_growth = server.log_bytes() - log_before
    time.sleep(6)  # past the 10 s head timeout: the idle ones should be gone
    try:
        later = requests.get(server.url + "/v2/health/live", timeout=10).status_code
    except requests.RequestException as exc:
        later = type(exc).__name__
    closed = sum(1 for s in opened if _closed_by_server(s))
    for s in opened:
        s.close()
    return {
        "opened": len(opened),
        "health_status": status,
        "health_s": round(health_s, 3),
        "log_bytes_in_6s": log_growth,
        "closed_by_server_after_12s": closed,
        "health_status_after_12s": later,
    }


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server answered (503) or closed the connection, rather than holding it."""
    s.settimeout(0.001)
    try:
        s.recv(1, socket.MSG_PEEK)  # data (a 503) or b"" (closed): the server let it go
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def unknown_paths(server: Server, count: int = 20_000) -> dict:
    session = requests.Session()
    for i in range(count):
        session.get(f"{server.url}/unknown/{i}", timeout=10)
    started = time.perf_counter()
    text = session.get(server.url + "/metrics", timeout=120).text
    return {
        "paths": count,
        "metrics_bytes": len(text),
        "scrape_s": round(time.perf_counter() - started, 3),
    }


def malformed_requests(server: Server) -> dict:
    statuses = {}
    for case, body in MALFORMED.items():
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = requests.post(server.url + "/v2/models/cnn/infer", data=body, timeout=30)
        statuses[case] = reply.status_code
    four = sum(400 <= s < 500 for s in statuses.values())
    return {"cases": len(statuses), "4xx": four, "500": sum(s >= 500 for s in statuses.values())}


# --- CLI cases -----------------------------------------------------------------------------

BAD_OPTIONS = [
    ["serve", "A", "--max-batch-size", "0"],
    ["serve", "A", "--max-queue-delay-ms", "-1"],
    ["serve", "A", "--port", "70000"],
    ["serve", "A", "--max-payload-mb", "0"],
    ["train", "cnn", "--seed", "-1", "--data-dir", "D"],
    ["train", "cnn", "--epochs", "0", "--data-dir", "D"],
    ["train", "cnn", "--max-train-samples", "2", "--epochs", "1", "--data-dir", "D"],
    ["train", "cnn", "--weight-decay", "nan", "--epochs", "1", "--data-dir", "D"],
    [
        "train",
        "cnn",
        "--lr",
        "nan",
        "--epochs",
        "1",
        "--max-train-samples",
        "100",
        "--data-dir",
        "D",
    ],
    ["export", "--format", "tflite", "--model", "M", "--out", "README.md"],
    ["verify", "A", "--json-out", "/no/such/dir/x.json"],
    ["bench", "A", "--min-time", "nan"],
    ["verify", "A", "--min-agreement", "2"],
]


def option_cases(root: Path, artifact: Path, model: Path, data: Path, work: Path) -> dict:
    results = []
    for args in BAD_OPTIONS:
        args = [{"A": str(artifact), "M": str(model), "D": str(data)}.get(a, a) for a in args]
        try:
            result = cli(root, *args, cwd=work, timeout=120)
        except subprocess.TimeoutExpired:  # it ran (a server started, training went on)
            results.append(False)
            continue
        # A bad option must be refused (exit 2), not run: exit 0 counts as not held here.
        results.append(result.returncode == 2 and "Traceback" not in result.stderr)
    return {"cases": len(results), "held": sum(results)}


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def data_cases(root: Path, data: Path, work: Path) -> dict:
    """Hostile batch files in a copy of the data: each must be refused with exit 2, fast."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    payloads = {
        "300,000 images in 94 bytes": _Reduce(
            multiarray._reconstruct, np.ndarray, (300_000, 3072), b"B"
        ),
        "a 1 TiB array": _Reduce(multiarray._reconstruct, np.ndarray, (2**40,), b"B"),
    }
    results = {}
    for case, payload in payloads.items():
        copy = work / "data_case"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(data, copy)
        batch = copy / "cifar-10-batches-py" / "data_batch_1"
        batch.write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2))
        started = time.perf_counter()
        result = cli(root, "train", "cnn", "--data-dir", str(copy), "--epochs", "1", cwd=work)
        results[case] = {
            "held": result.returncode == 2 and "Traceback" not in result.stderr,
            "seconds": round(time.perf_counter() - started, 1),
        }
    shutil.rmtree(work / "data_case", ignore_errors=True)
    return results


def sidecar_cases(root: Path, artifact: Path, work: Path) -> dict:
    image = work / "image.png"
    Image.new("RGB", (32, 32), (120, 40, 200)).save(image)
    record = json.loads(Path(str(artifact) + ".json").read_text())
    ok = 0
    for change, _ in MALFORMED_SIDECARS.values():
        target = work / "sidecar_case" / artifact.name
        shutil.rmtree(target.parent, ignore_errors=True)
        target.parent.mkdir()
        shutil.copy2(artifact, target)
        Path(str(target) + ".json").write_text(json.dumps(_malformed(record, change)))
        ok += held(cli(root, "predict", str(target), str(image), cwd=work))
    shutil.rmtree(work / "sidecar_case", ignore_errors=True)
    return {"cases": len(MALFORMED_SIDECARS), "held": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the checkout to test")
    parser.add_argument("--artifact", type=Path, required=True, help="a LiteRT .tflite export")
    parser.add_argument("--model", type=Path, help="the .keras model (CLI option cases)")
    parser.add_argument("--data", type=Path, help="a CIFAR-10 directory (data and option cases)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    root, artifact = args.root.resolve(), args.artifact.resolve()
    cpu = cpu_name()
    figures: dict = {"root": str(root), "cpu": cpu, "cores": os.cpu_count()}
    for name, case in [
        ("image_bomb", image_bomb),
        ("stalled_uploads", stalled_uploads),
        ("idle_connections", idle_connections),
        ("unknown_paths", unknown_paths),
        ("malformed_requests", malformed_requests),
    ]:
        server = Server(root, artifact)
        try:
            figures[name] = case(server)
        except Exception as exc:  # a case that breaks the server is a figure too
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            alive = server.process.poll() is None
            server.close()
        figures[name]["server_survived"] = alive
        print(name, json.dumps(figures[name]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        figures["sidecars"] = sidecar_cases(root, artifact, work)
        print("sidecars", json.dumps(figures["sidecars"]), flush=True)
        if args.data and args.model:
            figures["data_files"] = data_cases(root, args.data.resolve(), work)
            print("data_files", json.dumps(figures["data_files"]), flush=True)
            figures["options"] = option_cases(
                root, artifact, args.model.resolve(), args.data.resolve(), work
            )
            print("options", json.dumps(figures["options"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
