"""A Triton model repository on the **python backend**: ``triton_python/<model>/config.pbtxt`` +
``1/model.py`` + ``1/model.tflite`` (the int8 TFLite, uint8 input, run by LiteRT).

The ONNX Runtime repository (``--format triton``) is what production Triton images run; this
one loads in any Triton with the python backend, including the ``nvidia-pytriton`` pip bundle,
so the mobile-size model is served by Triton too. ``model.py`` merges the requests Triton's
dynamic batcher hands it into one interpreter call. numpy and ai-edge-litert must be installed
in the Python that Triton's python stub runs; as the stub ignores PYTHONPATH,
``CIFAR_DEPLOY_PYTHON_PATH`` in Triton's environment names a site-packages that ``model.py``
puts first on ``sys.path`` instead (Triton 2.51's python backend needs numpy < 2 there: with
numpy 2 it rejects every response, "output tensor shape does not match size of output"). The
config's ``num_threads`` (0: every core) sets LiteRT's threads.
"""

from __future__ import annotations

from pathlib import Path

from ..contract import INPUT_NAME, OUTPUT_NAME, Signature
from .base import (
    DEFAULT_MAX_BATCH_SIZE,
    ExportFormat,
    ExportOptions,
    FormatOption,
    Produced,
    register_format,
)
from .source import ExportSource
from .tflite import export_tflite
from .triton import model_config_text

TRITON_TYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "float32": "TYPE_FP32"}

THREADS_PARAMETER = """\
parameters {{
  key: "num_threads"
  value: {{ string_value: "{threads}" }}
}}
"""

MODEL_PY = '''\
"""Triton python backend: the int8 TFLite beside this file, run by LiteRT (written by
cifar-deploy export --format triton-python)."""

import json
import os
import sys

# numpy and ai-edge-litert come from the Python that Triton's python stub runs (install them in
# the Triton image). Triton's stub ignores PYTHONPATH, so CIFAR_DEPLOY_PYTHON_PATH, set in
# Triton's environment, names a site-packages to put first instead. Triton 2.51's python backend
# needs numpy < 2 there.
PYTHON_PATH = os.environ.get("CIFAR_DEPLOY_PYTHON_PATH", "")
if PYTHON_PATH:
    sys.path.insert(0, PYTHON_PATH)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

        threads = int(parameters.get("num_threads") or 0) or os.cpu_count()
        model = os.path.join(args["model_repository"], args["model_version"], "model.tflite")
        self.interpreter = Interpreter(model_path=model, num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "{input}").as_numpy() for r in requests]
        merged = np.concatenate(arrays)
        if self.batch != len(merged):
            self.interpreter.resize_tensor_input(self.input["index"], list(merged.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(merged)
        self.interpreter.set_tensor(self.input["index"], merged.astype(self.input["dtype"]))
        self.interpreter.invoke()
        probs = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
        responses, start = [], 0
        for array in arrays:
            part = probs[start : start + len(array)]
            start += len(array)
            tensor = pb_utils.Tensor("{output}", part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''


def config_pbtxt(
    name: str,
    input_dtype: str,
    max_batch_size: int,
    delay_us: int = 2000,
    threads: int = 0,
    instances: int = 1,
    signature: Signature = Signature(),
) -> str:
    """The repository's ``config.pbtxt``; ``threads`` 0: LiteRT uses every core;
    ``instances``: model instances, each its own python stub process with its own LiteRT."""
    return model_config_text(
        name,
        'backend: "python"',
        max_batch_size,
        delay_us,
        input_type=TRITON_TYPES[input_dtype],
        kind="KIND_CPU",
        parameters=THREADS_PARAMETER.format(threads=threads),
        count=instances,
        signature=signature,
    )


def model_py() -> str:
    return MODEL_PY.replace("{input}", INPUT_NAME).replace("{output}", OUTPUT_NAME)


def export_triton_python(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    max_batch_size = options.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    inner = export_tflite(source, staging, options, quantization)
    repo = staging / "triton_python"
    version_dir = repo / source.model_name / "1"
    version_dir.mkdir(parents=True)
    inner.path.rename(version_dir / "model.tflite")
    (version_dir / "model.py").write_text(model_py())
    (repo / source.model_name / "config.pbtxt").write_text(
        config_pbtxt(
            source.model_name, inner.input.dtype, max_batch_size, signature=source.signature
        )
    )
    return Produced(
        path=repo,
        input=inner.input,
        output=inner.output,
        calibration=inner.calibration,
        extra={
            **inner.extra,
            "triton_model": source.model_name,
            "max_batch_size": max_batch_size,
            "backend": "python",
            "runtime": "ai-edge-litert",
        },
    )


register_format(
    ExportFormat(
        name="triton-python",
        quantizations=("int8",),
        default_quantization="int8",
        target=lambda model, q, options=None: "triton_python",
        fn=export_triton_python,
        description="Triton model repository, python backend serving the int8 TFLite (LiteRT)",
        options=(
            FormatOption(
                "max_batch_size",
                "--max-batch-size",
                expected="at least 1",
                valid=lambda v: v >= 1,
            ),
        ),
    )
)
