"""A Triton / KServe model repository: ``triton/<model>/config.pbtxt`` + ``1/model.onnx``.

The float32 ONNX model served by Triton's ONNX Runtime backend with dynamic batching, so the same
model runs on a cluster of inference servers speaking the Open Inference Protocol.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..contract import INPUT_NAME, OUTPUT_NAME, Signature
from .base import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_OPSET,
    ExportFormat,
    ExportOptions,
    FormatOption,
    Produced,
    register_format,
)
from .metadata import float_input, prob_output
from .onnx_format import OPSET, export_onnx
from .source import ExportSource

# A Triton model configuration, as both repository kinds write it: the runtime line (an ONNX
# Runtime platform or the python backend), the one input and output of the contract, dynamic
# batching, one instance, and any parameters.
CONFIG_TEMPLATE = """\
name: "{name}"
{runtime}
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: {input_type}
    dims: [ {input_dims} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
  }}
]
dynamic_batching {{
{preferred}  max_queue_delay_microseconds: {delay_us}
}}
instance_group [
  {{
    count: {count}
    kind: {kind}
  }}
]
{parameters}"""


def model_config_text(
    name: str,
    runtime: str,
    max_batch_size: int,
    delay_us: int,
    input_type: str = "TYPE_FP32",
    preferred: tuple[int, ...] = (),
    kind: str = "KIND_AUTO",
    parameters: str = "",
    count: int = 1,
    signature: Signature = Signature(),
) -> str:
    """``config.pbtxt`` text for ``name`` (``runtime``: its ``platform:`` or ``backend:`` line;
    ``parameters``: extra top-level blocks; ``count``: model instances; ``signature``: the
    model's input size and class count)."""
    return CONFIG_TEMPLATE.format(
        name=name,
        runtime=runtime,
        max_batch_size=max_batch_size,
        input=INPUT_NAME,
        input_type=input_type,
        input_dims=", ".join(map(str, signature.image_shape)),
        output=OUTPUT_NAME,
        classes=signature.classes,
        preferred=f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        if preferred
        else "",
        delay_us=delay_us,
        kind=kind,
        parameters=parameters,
        count=count,
    )


def config_pbtxt(
    name: str, max_batch_size: int, delay_us: int = 2000, signature: Signature = Signature()
) -> str:
    preferred = tuple(sorted({b for b in (8, 32, max_batch_size) if b <= max_batch_size}))
    runtime = 'platform: "onnxruntime_onnx"'
    return model_config_text(
        name, runtime, max_batch_size, delay_us, preferred=preferred, signature=signature
    )


def export_triton(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    max_batch_size = options.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    inner = export_onnx(source, staging, options, "none")
    repo = staging / "triton"
    version_dir = repo / source.model_name / "1"
    version_dir.mkdir(parents=True)
    inner.path.rename(version_dir / "model.onnx")
    onnx.checker.check_model(str(version_dir / "model.onnx"))
    (repo / source.model_name / "config.pbtxt").write_text(
        config_pbtxt(source.model_name, max_batch_size, signature=source.signature)
    )
    return Produced(
        path=repo,
        input=float_input(source.signature),
        output=prob_output("float32", source.signature),
        extra={
            "triton_model": source.model_name,
            "max_batch_size": max_batch_size,
            "platform": "onnxruntime_onnx",
            "opset": options.opset or DEFAULT_OPSET,
        },
    )


register_format(
    ExportFormat(
        name="triton",
        quantizations=("none",),
        default_quantization="none",
        target=lambda model, q, options=None: "triton",
        fn=export_triton,
        description="Triton/KServe model repository (ONNX Runtime backend, dynamic batching)",
        options=(
            OPSET,
            FormatOption(
                "max_batch_size",
                "--max-batch-size",
                expected="at least 1",
                valid=lambda v: v >= 1,
            ),
        ),
    )
)
