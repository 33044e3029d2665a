"""TFLite (LiteRT) through ``tf.lite.TFLiteConverter.from_saved_model``, builtin ops only.

Quantizations: ``none`` (float32), ``float16`` (float16 weights), ``dynamic`` (int8 weights,
float activations) and ``int8`` (full integer: int8 weights and activations, uint8 input by
default so camera pixels go in untouched, float32 probabilities out). Calibration for ``int8``
uses training images with exactly the inference preprocessing, which lives inside the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _tf, interrupts
from ..contract import INPUT_NAME, MOBILE_INPUT_DTYPES
from .base import (
    DEFAULT_IO_TYPE,
    IO_TYPES,
    ExportFormat,
    ExportOptions,
    FormatOption,
    Produced,
    register_format,
)
from .calibration import calibration_sample
from .metadata import TensorSpec, prob_output
from .source import ExportSource
from .tflite_metadata import LABELS_FILE, build_metadata, embed


def _tensor_spec(detail: dict, name: str, static: bool = False) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dims = [int(d) for d in detail["shape"]]
    shape = dims if static else [None, *dims[1:]]
    if dtype == "float32" or not scale:
        return TensorSpec(name=name, shape=shape, dtype=dtype)
    return TensorSpec(
        name=name, shape=shape, dtype=dtype, scale=float(scale), zero_point=int(zero_point)
    )


def export_tflite(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    tf = _tf.tf()
    saved = source.savedmodel_for(options.static_batch)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    calibration = None
    if quantization in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        images, calibration = calibration_sample(options, source.signature)

        def representative():
            for i in range(len(images)):
                yield [images[i : i + 1].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = options.io_type or DEFAULT_IO_TYPE
        converter.inference_input_type = {
            "uint8": tf.uint8,
            "int8": tf.int8,
            "float32": tf.float32,
        }[io_type]
        converter.inference_output_type = tf.float32
    with _tf.quiet_native():  # the converter prints its quantization settings
        flatbuffer = converter.convert()
    interrupts.check()  # the converter's native code can swallow a Ctrl-C
    # Embedded metadata and labels go in before the file is hashed: the sidecar covers them.
    names = source.class_names
    metadata = build_metadata(source.model_name, quantization, names, source.signature)
    shipped = embed(flatbuffer, metadata, names)
    path = staging / f"{source.model_name}_{quantization}.tflite"
    path.write_bytes(shipped)

    from ai_edge_litert.interpreter import Interpreter

    with _tf.quiet_native():
        interpreter = Interpreter(model_content=shipped)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    spec = _tensor_spec(inp, INPUT_NAME, static=options.static_batch is not None)
    extra = {
        "tflite_input_tensor": inp["name"],
        "tflite_output_tensor": out["name"],
        "signature": "serving_default",
        "embedded_metadata": {"bytes": len(shipped) - len(flatbuffer), "labels": LABELS_FILE},
        "mobile_consumers": spec.dtype in MOBILE_INPUT_DTYPES,
    }
    if options.static_batch is not None:
        extra["static_batch"] = options.static_batch
    return Produced(
        path=path,
        input=spec,
        output=prob_output(np.dtype(out["dtype"]).name, source.signature),
        calibration=calibration,
        extra=extra,
    )


def tflite_name(model: str, quantization: str, options: ExportOptions | None = None) -> str:
    """``cnn_int8.tflite``; ``cnn_int8_b1.tflite`` with a static batch of 1."""
    static = options.static_batch if options is not None else None
    suffix = f"_b{static}" if static is not None else ""
    return f"{model}_{'float32' if quantization == 'none' else quantization}{suffix}.tflite"


register_format(
    ExportFormat(
        name="tflite",
        quantizations=("none", "float16", "dynamic", "int8"),
        default_quantization="int8",
        target=tflite_name,
        fn=export_tflite,
        description="LiteRT flatbuffer for mobile; int8 default with uint8 input",
        options=(
            FormatOption(
                "static_batch",
                "--static-batch",
                expected="at least 1",
                valid=lambda v: v >= 1,
            ),
            FormatOption(
                "io_type",
                "--io-type",
                applies=lambda q: q == "int8",
                expected=f"one of: {', '.join(IO_TYPES)}",
                valid=lambda v: v in IO_TYPES,
            ),
        ),
    )
)
