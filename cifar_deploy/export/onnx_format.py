"""ONNX through tf2onnx's ``from_function`` (a ``tf.function`` with an explicit input signature;
``from_keras`` is unreliable on Keras 3 models, tensorflow-onnx #2448), opset 18 by default.

Input ``images`` (float32, dynamic batch), output ``probabilities``; labels and the preprocessing
contract go into ``metadata_props``; every model passes ``onnx.checker``. ``int8`` is static QDQ
quantization with ``onnxruntime.quantization`` on the training-split calibration sample;
``float16`` uses onnxruntime's float16 converter with float32 inputs and outputs kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import interrupts
from ..contract import INPUT_NAME, OUTPUT_NAME, preprocessing_text
from .base import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportFormat,
    ExportOptions,
    FormatOption,
    Produced,
    register_format,
)
from .calibration import calibration_sample
from .metadata import float_input, prob_output
from .source import ExportSource

OPSET = FormatOption(
    "opset",
    "--opset",
    expected=f"{MIN_OPSET}..{MAX_OPSET}",
    valid=lambda v: MIN_OPSET <= v <= MAX_OPSET,
)


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node follows its producers (ONNX requires it; the float16
    converter appends its input casts at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input no node produces")
        for node in ready:
            available.update(node.output)
            ordered.append(node)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def convert_float(source: ExportSource, opset: int):
    """The float32 ONNX model with the contract's tensor names."""
    import tf2onnx

    fn = source.serving_function()
    model, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    interrupts.check()  # tf2onnx runs TensorFlow's graph optimizer natively
    graph = model.graph
    _rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # dynamic batch, named
    return model


def _set_metadata(model, source: ExportSource, quantization: str) -> None:
    props = {
        "model_name": source.model_name,
        "quantization": quantization,
        "class_names": json.dumps(list(source.class_names)),
        "preprocessing": preprocessing_text(source.signature),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "source_sha256": source.record.sha256,
    }
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "cifar-deploy"


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over uint8 images fed as float32."""

    def __init__(self, images: np.ndarray, batch: int = 32):
        self._batches = iter(
            [
                {INPUT_NAME: images[i : i + batch].astype(np.float32)}
                for i in range(0, len(images), batch)
            ]
        )

    def get_next(self):
        return next(self._batches, None)


# Weights in 7 bits ([-64, 64]) and activations in 8: on x86 CPUs without VNNI (AVX2 only, e.g.
# AMD Zen 3) ONNX Runtime's U8S8 kernels add two uint8 x int8 products in a saturating 16-bit lane
# (vpmaddubsw); 255 * 127 * 2 = 64770 overflows it, 255 * 64 * 2 = 32640 cannot. ONNX Runtime's
# quantization guide advises exactly this (reduce_range with per-channel weights); on VNNI CPUs
# (vpdpbusd accumulates in 32 bits) both files compute the same thing at the same speed.
INT8_SETTINGS = {
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": True,
}


def quantize_int8(float_path: Path, out_path: Path, images: np.ndarray, **overrides) -> None:
    """Static QDQ quantization of ``float_path`` calibrated on ``images`` (uint8 NHWC, fed as
    float32: the preprocessing is inside the graph). ``overrides`` replace ``INT8_SETTINGS``
    (the benchmark rebuilds the pre-``reduce_range`` file with them)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = {**INT8_SETTINGS, **overrides}
    prepared = out_path.with_name(out_path.stem + ".prepared.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    # The final softmax stays float: quantized to 8 bits its probabilities come in steps of
    # 1/255 and no longer sum to one.
    softmax = [n.name for n in onnx.load(prepared).graph.node if n.op_type == "Softmax"]
    try:
        quantize_static(
            str(prepared),
            str(out_path),
            _CalibrationReader(images),
            quant_format=QuantFormat[settings["quant_format"]],
            activation_type=QuantType[settings["activation_type"]],
            weight_type=QuantType[settings["weight_type"]],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            nodes_to_exclude=softmax,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _quantize_int8(float_path: Path, out_path: Path, options: ExportOptions, source) -> dict:
    images, record = calibration_sample(options, source.signature)
    quantize_int8(float_path, out_path, images)
    return {**record, "settings": dict(INT8_SETTINGS)}


def export_onnx(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    import onnx

    opset = options.opset or DEFAULT_OPSET
    model = convert_float(source, opset)
    path = staging / f"{source.model_name}.onnx"
    calibration = None
    if quantization == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
        topological_sort(model.graph)
    if quantization == "int8":
        float_path = staging / "float32.onnx"
        onnx.save(model, float_path)
        calibration = _quantize_int8(float_path, path, options, source)
        model = onnx.load(path)
    _set_metadata(model, source, quantization)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return Produced(
        path=path,
        input=float_input(source.signature),
        output=prob_output("float32", source.signature),
        calibration=calibration,
        extra={"opset": opset},
    )


register_format(
    ExportFormat(
        name="onnx",
        quantizations=("none", "float16", "int8"),
        default_quantization="none",
        target=lambda model, q, options=None: f"{model}_{'float32' if q == 'none' else q}.onnx",
        fn=export_onnx,
        description="ONNX (tf2onnx from_function), dynamic batch; int8 = static QDQ",
        options=(OPSET,),
    )
)
