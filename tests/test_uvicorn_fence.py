"""The HTTP lane and the guarded protocol subclass uvicorn's private httptools protocol: the
installed uvicorn is one pyproject pins, its internals are checked at start-up, a uvicorn that
lacks them still serves (on its public options, with one log line), and --no-fast-path turns
the lane off."""

from __future__ import annotations

import logging
import re

import pytest
import requests
import tomllib
import uvicorn
from packaging.requirements import Requirement

from cifar_deploy.serving import limits
from cifar_deploy.serving.limits import ServerLimits, uvicorn_config
from tests.helpers import REPO, serving


@pytest.fixture
def recheck(monkeypatch):
    """Forget the process's cached check, so that a test sees its own uvicorn."""
    monkeypatch.setattr(limits, "_checked", {})


def test_the_installed_uvicorn_is_a_pinned_release_and_has_what_the_lane_uses(recheck):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pin = next(Requirement(d) for d in project["dependencies"] if re.match(r"uvicorn\b", d))
    assert pin.specifier.contains(uvicorn.__version__), (pin, uvicorn.__version__)
    assert limits.private_api_problem() is None


def test_a_uvicorn_without_the_internals_serves_on_public_options(
    tiny_onnx, recheck, monkeypatch, caplog
):
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    monkeypatch.delattr(HttpToolsProtocol, "on_response_complete")
    app = build_server_app(load_predictor(tiny_onnx), "cnn")
    fence = ServerLimits(max_connections=5)
    with caplog.at_level(logging.WARNING, logger="cifar_deploy.serving.limits"):
        config = uvicorn_config(app, "127.0.0.1", 0, fence)
        with serving(app, fence) as address:
            answer = requests.get(f"http://{address}/v2/health/live", timeout=10)
    assert answer.status_code == 200
    assert config.http == "h11" and config.limit_concurrency == 5
    assert config.h11_max_incomplete_event_size == fence.max_head_bytes
    lines = [r.getMessage() for r in caplog.records if "public options" in r.getMessage()]
    assert lines and "HttpToolsProtocol lacks on_response_complete" in lines[0]


def test_no_fast_path_keeps_the_guards_and_drops_the_lane(tiny_onnx):
    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    app = build_server_app(load_predictor(tiny_onnx), "cnn")
    with_lane = uvicorn_config(app, "127.0.0.1", 0).http
    without = uvicorn_config(app, "127.0.0.1", 0, fast_path=False).http
    assert with_lane.__name__ == "LaneProtocol" and without.__name__ == "GuardedProtocol"
    assert issubclass(with_lane, without.__mro__[1])  # both guard uvicorn's own protocol
