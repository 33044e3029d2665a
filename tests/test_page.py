"""Specification of the page at / of ``serve``: it works offline, and in a real browser it shows
the same top-5 classes, for every served model, as the Open Inference Protocol's JSON answer."""

from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.server import SampleImages, build_server_app
from tests.helpers import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def served(tiny_exports):
    """A repository of two artifacts of the tiny model (float32 ONNX, int8 TFLite) with test
    images for the random-image button."""
    predictors = {
        "cnn_float32.onnx": load_predictor(tiny_exports[("onnx", "none")].path),
        "cnn_int8.tflite": load_predictor(tiny_exports[("tflite", "int8")].path),
    }
    rng = np.random.default_rng(0)
    samples = SampleImages(
        rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 20),
        predictors["cnn_int8.tflite"].class_names,
    )
    with serving(build_server_app(predictors, samples=samples)) as address:
        yield f"http://{address}", predictors


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_is_one_file_with_no_outside_address(served):
    base, _ = served
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no CDN, no remote asset
    assert "/v2/repository/index" in page.text and "/infer" in page.text


def test_the_cdn_backed_docs_pages_are_switched_off(served):
    base, _ = served
    assert requests.get(f"{base}/docs", timeout=10).status_code == 404
    assert requests.get(f"{base}/redoc", timeout=10).status_code == 404


def test_a_random_test_image_comes_with_its_true_class(served):
    base, predictors = served
    sample = requests.get(f"{base}/v1/samples/random", timeout=10).json()
    png = base64.b64decode(sample["image"].split(",", 1)[1])
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (32, 32, 3)
    assert sample["label"] in predictors["cnn_int8.tflite"].class_names


def test_without_a_dataset_the_random_image_is_a_404_that_says_what_to_pass(tiny_onnx):
    with serving(build_server_app(load_predictor(tiny_onnx))) as address:
        answer = requests.get(f"http://{address}/v1/samples/random", timeout=10)
    assert answer.status_code == 404 and "--data-dir" in answer.json()["error"]


def json_top5(base: str, model: str, pixels: np.ndarray, datatype: str) -> list[tuple[str, float]]:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, *pixels.shape],
                "datatype": datatype,
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    answer = requests.post(f"{base}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    probs = np.asarray(answer.json()["outputs"][0]["data"])
    meta = requests.get(f"{base}/v2/models/{model}", timeout=10).json()
    names = meta["parameters"]["class_names"]
    return [(names[k], float(probs[k])) for k in np.argsort(-probs)[:5]]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_offline(browser, base: str):
    """A page on ``base`` whose every request elsewhere is refused and recorded."""
    page = browser.new_page()
    outside: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(f"{base}/")
    page.wait_for_selector("#server:not(:has-text('Loading'))")
    return page, outside


def bars(page) -> dict[str, list[tuple[str, float]]]:
    page.wait_for_selector("#results[data-state=done]", timeout=30_000)
    cards = {}
    for card in page.query_selector_all(".model"):
        cards[card.get_attribute("data-model")] = [
            (bar.get_attribute("data-label"), float(bar.get_attribute("data-probability")))
            for bar in card.query_selector_all(".bar")
        ]
    return cards


def test_an_uploaded_image_gets_the_json_answers_bars_for_every_model(served, browser, tmp_path):
    base, _ = served
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    upload = tmp_path / "image.png"
    upload.write_bytes(png_bytes(pixels))
    page, outside = open_offline(browser, base)
    page.set_input_files("#file", str(upload))
    shown = bars(page)
    assert set(shown) == {"cnn_float32.onnx", "cnn_int8.tflite"}
    for model, datatype in (("cnn_float32.onnx", "FP32"), ("cnn_int8.tflite", "UINT8")):
        expected = json_top5(base, model, pixels, datatype)
        assert [label for label, _ in shown[model]] == [label for label, _ in expected]
        np.testing.assert_allclose(
            [p for _, p in shown[model]], [p for _, p in expected], atol=1e-5
        )
    latencies = [float(e.get_attribute("data-ms")) for e in page.query_selector_all(".latency")]
    assert len(latencies) == 2 and all(ms > 0 for ms in latencies)
    assert page.text_content("#error") == ""
    assert outside == []  # the page needed nothing beyond the server


def test_any_image_size_is_resized_and_the_random_button_shows_the_true_class(
    served, browser, tmp_path
):
    base, _ = served
    wide = np.random.default_rng(4).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    upload = tmp_path / "wide.png"
    upload.write_bytes(png_bytes(wide))
    page, outside = open_offline(browser, base)
    page.set_input_files("#file", str(upload))
    assert all(len(top) == 5 for top in bars(page).values())
    page.click("#random")
    page.wait_for_selector("#truth:has-text('true class')")
    assert len(bars(page)) == 2 and outside == []
