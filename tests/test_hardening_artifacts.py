"""Specification: artifacts that load but are wrong are caught where they are loaded (issue #14,
part 4). A sidecar's quantization is what the file's tensors are; every artifact answers a probe
batch with probabilities before it counts as loaded; directory artifacts are hashed as trees;
sidecars are validated field by field and record no absolute paths. A bounded fuzz of mutated
model files and sidecars through the CLI ends every case in exit 0 or 2 with one line, never a
traceback or a crash."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cifar_deploy.errors import DataFormatError, InvalidModelError
from cifar_deploy.export.metadata import read_sidecar, sha256_of, sidecar_path
from cifar_deploy.runtime import load_predictor
from tests.helpers import REPO


def copy_with_sidecar(artifact: Path, directory: Path, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (name or artifact.name)
    if artifact.is_dir():
        shutil.copytree(artifact, target)
    else:
        shutil.copy2(artifact, target)
    shutil.copy2(sidecar_path(artifact), sidecar_path(target))
    return target


def rewrite_sidecar(artifact: Path, **changes) -> None:
    """Edit a sidecar, keeping its hash in step with the file (as an attacker or a careless
    script would), so only the other checks can catch what is wrong."""
    record = json.loads(sidecar_path(artifact).read_text())
    record.update(changes)
    record["artifact"]["sha256"] = sha256_of(artifact)
    sidecar_path(artifact).write_text(json.dumps(record))


def test_a_float32_model_labelled_int8_is_refused_at_load(tiny_exports, tmp_path):
    fake = copy_with_sidecar(tiny_exports[("tflite", "none")].path, tmp_path, "cnn_int8.tflite")
    rewrite_sidecar(fake, quantization="int8")
    with pytest.raises(InvalidModelError, match="says quantization 'int8', but the file's tensors"):
        load_predictor(fake)


def test_every_exported_sidecar_states_the_quantization_its_tensors_have(tiny_exports):
    from cifar_deploy.export.quantization import measured_quantization

    for (fmt, quantization), artifact in tiny_exports.items():
        assert measured_quantization(artifact.path, fmt) == quantization, (fmt, quantization)


def test_export_fails_when_the_converter_produces_another_quantization(
    tiny_model, tmp_path, monkeypatch
):
    from cifar_deploy.errors import ExportError
    from cifar_deploy.export import ExportOptions, base, export_model
    from tests.helpers import CALIBRATION

    monkeypatch.setattr(base, "measured_quantization", lambda path, fmt: "none")
    options = ExportOptions(quantization="int8", calibration_images=CALIBRATION)
    (artifact,) = export_model(tiny_model, "tflite", options, tmp_path / "out")
    assert artifact.status == "failed"
    assert isinstance(artifact.exception, ExportError)
    assert "produced a 'none' model" in artifact.error
    assert not list((tmp_path / "out").glob("*.tflite"))  # nothing mislabelled left behind


def test_calibration_samples_zero_is_refused(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from cifar_deploy.cli import app

    result = CliRunner().invoke(
        app,
        ["export", "--model", str(tiny_model), "--format", "tflite", "--quantize", "int8"]
        + ["--calibration-samples", "0", "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2
    assert "Invalid value for '--calibration-samples'" in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_stray_directory_inside_a_savedmodel_changes_its_hash(tiny_exports, tmp_path):
    copy = copy_with_sidecar(tiny_exports[("savedmodel", "none")].path, tmp_path)
    assert sha256_of(copy) == read_sidecar(copy).artifact.sha256
    (copy / "cnn" / "1" / "stray").mkdir()
    with pytest.raises(InvalidModelError, match="does not match its sidecar"):
        load_predictor(copy)


def test_a_keras_model_that_outputs_logits_is_refused_with_a_hint(tmp_path):
    from cifar_deploy import _tf

    keras = _tf.keras()
    inputs = keras.Input((32, 32, 3))
    scores = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))  # logits: no softmax
    logits = keras.Model(inputs, scores)
    path = tmp_path / "logits.keras"
    logits.save(path)
    with pytest.raises(InvalidModelError, match="outputs are not probabilities") as caught:
        load_predictor(path)
    assert "softmax" in caught.value.hint


def test_sidecars_record_the_source_relative_to_the_artifact(tiny_exports):
    for artifact in tiny_exports.values():
        source = read_sidecar(artifact.path).source.path
        assert not Path(source).is_absolute(), source
        assert (artifact.path.parent / source).resolve().exists()


# Sidecars that parse as JSON but are not valid records: each names the field.
MALFORMED_SIDECARS = {
    "a JSON string": ("just a string", "expected a JSON object"),
    "a null hash": ({"artifact": {"sha256": None}}, "'artifact' must be"),
    "an unknown format": ({"format": "caffe"}, "'format' must be one of"),
    "two class names": ({"class_names": ["cat", "dog"]}, "'class_names' must hold 10 names"),
    "one class name": ({"class_names": ["cat"]}, "'class_names' must be a list of at least 2"),
    "an unknown preprocessing": (
        {"source_preprocess": {"mode": "magic", "mean": None, "std": None}},
        "'source_preprocess' must be an object with 'mode'",
    ),
    "a two-channel std": (
        {"source_preprocess": {"mode": "unit", "mean": None, "std": [1, 1]}},
        "'source_preprocess' must be an object with 'mode'",
    ),
    "a text softmax flag": ({"added_softmax": "yes"}, "'added_softmax' must be true or false"),
    "a 2-channel input": ({"input": {"shape": [None, 32, 32, 2]}}, "'input' must have shape"),
    "a text scale": ({"input": {"scale": "0.5"}}, "'input' must be a positive number or null"),
    "an unknown field": ({"colour": "red"}, "unknown fields 'colour'"),
    "a float schema version": ({"schema_version": 1.0}, "'schema_version' must be 1"),
    "a list for extra": ({"extra": []}, "'extra' must be an object"),
}


def _malformed(record: dict, change) -> object:
    if not isinstance(change, dict):
        return change
    record = json.loads(json.dumps(record))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key].update(value)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize("case", list(MALFORMED_SIDECARS))
def test_a_malformed_sidecar_is_a_format_error_naming_the_field(case, tiny_exports, tmp_path):
    artifact = copy_with_sidecar(tiny_exports[("tflite", "none")].path, tmp_path)
    change, message = MALFORMED_SIDECARS[case]
    record = json.loads(sidecar_path(artifact).read_text())
    sidecar_path(artifact).write_text(json.dumps(_malformed(record, change)))
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(")):
        load_predictor(artifact)


# --- a bounded fuzz through the CLI, one subprocess per case --------------------------------


def _mutations(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    n = len(data)
    out = []
    for _ in range(6):
        cut = rng.randrange(8, n)
        out.append((f"truncated at {cut}", data[:cut]))
    for i in range(10):
        mutated = bytearray(data)
        for _ in range(rng.choice((1, 8, 64))):
            mutated[rng.randrange(n)] = rng.randrange(256)
        out.append((f"random bytes #{i}", bytes(mutated)))
    for _ in range(4):
        start = rng.randrange(n)
        mutated = bytearray(data)
        mutated[start : start + 256] = bytes(min(256, n - start))
        out.append((f"zeroed 256 bytes at {start}", bytes(mutated)))
    out.append(("junk appended", data + bytes(rng.randrange(256) for _ in range(512))))
    out.append(("empty", b""))
    return out


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from cifar_deploy.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _one_line_or_success(result: subprocess.CompletedProcess, case: str) -> None:
    assert result.returncode in (0, 2), (case, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (case, result.stderr[-2000:])
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (case, result.stderr)


@pytest.mark.slow
def test_mutated_model_files_end_in_success_or_one_line_never_a_traceback(tiny_exports, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (120, 40, 200)).save(image)
    rng = random.Random(14)  # fixed seed: the same cases on every run
    outcomes = {0: 0, 2: 0}
    for kind in (("tflite", "int8"), ("onnx", "none")):
        original = tiny_exports[kind].path
        for case, data in _mutations(original.read_bytes(), rng)[:14]:
            artifact = copy_with_sidecar(original, tmp_path / f"{kind[0]}_{len(outcomes)}")
            artifact.write_bytes(data)
            if data:
                rewrite_sidecar(artifact)  # past the hash check: the loader's own checks decide
            result = _run_cli("predict", str(artifact), str(image))
            _one_line_or_success(result, f"{kind} {case}")
            outcomes[result.returncode] += 1
            shutil.rmtree(artifact.parent)
    assert outcomes[2] >= 10  # most mutations are caught, not run


@pytest.mark.slow
def test_malformed_sidecars_through_the_cli_exit_2_with_one_line(tiny_exports, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (120, 40, 200)).save(image)
    original = tiny_exports[("tflite", "none")].path
    record = json.loads(sidecar_path(original).read_text())
    extra = {"not JSON": None, "a binary sidecar": None}
    for case in [*MALFORMED_SIDECARS, *extra]:
        artifact = copy_with_sidecar(original, tmp_path / case.replace(" ", "_"))
        if case == "not JSON":
            sidecar_path(artifact).write_text("{ not json")
        elif case == "a binary sidecar":
            sidecar_path(artifact).write_bytes(bytes(range(256)))
        else:
            changed = _malformed(record, MALFORMED_SIDECARS[case][0])
            sidecar_path(artifact).write_text(json.dumps(changed))
        for verb in (["predict", str(artifact), str(image)], ["verify", str(artifact)]):
            result = _run_cli(*verb)
            assert result.returncode == 2, (case, verb[0], result.stderr[-1500:])
            _one_line_or_success(result, f"{case} ({verb[0]})")


def test_non_utf8_tensor_names_are_one_line_in_predict_and_inspect(tiny_exports, tmp_path):
    from typer.testing import CliRunner

    from cifar_deploy.cli import app

    data = bytearray(tiny_exports[("tflite", "none")].path.read_bytes())
    at = data.find(b"serving_default_images")
    assert at > 0
    data[at : at + 4] = b"\xff\xfe\xfd\xfc"  # the input tensor's name is no longer UTF-8
    bad = tmp_path / "bad.tflite"  # no sidecar: the file alone is read
    bad.write_bytes(bytes(data))
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    for args in (["predict", str(bad), str(image)], ["inspect", str(bad)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "UnicodeDecodeError" in result.output and "Traceback" not in result.output


def test_the_sidecar_schema_names_exactly_the_format_tables_formats_and_quantizations():
    from cifar_deploy.export import export_formats
    from cifar_deploy.export.metadata import QUANTIZATIONS, SIDECAR_FORMATS
    from cifar_deploy.runtime import PREDICTORS

    formats = export_formats()
    assert set(SIDECAR_FORMATS) == {f.name for f in formats}
    assert set(QUANTIZATIONS) == {q for f in formats for q in f.quantizations}
    assert set(SIDECAR_FORMATS) <= set(PREDICTORS)  # every sidecar format has a runtime
