"""A Triton / KServe model repository: ``triton/<model>/config.pbtxt`` + ``1/model.onnx``.

The float32 ONNX model served by Triton's ONNX Runtime backend with dynamic batching, so the same
model runs on a cluster of inference servers speaking the Open Inference Protocol.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .base import ExportFormat, ExportOptions, Produced, float_input, prob_output, register_format
from .metadata import INPUT_NAME, OUTPUT_NAME
from .onnx_format import export_onnx
from .source import ExportSource

CONFIG_TEMPLATE = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ 32, 32, 3 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {delay_us}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"""


def config_pbtxt(name: str, max_batch_size: int, delay_us: int = 2000) -> str:
    preferred = sorted({b for b in (8, 32, max_batch_size) if b <= max_batch_size})
    return CONFIG_TEMPLATE.format(
        name=name, max_batch_size=max_batch_size, input=INPUT_NAME, output=OUTPUT_NAME,
        preferred=", ".join(map(str, preferred)), delay_us=delay_us,
    )  # fmt: skip


def export_triton(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    from ..errors import InvalidOptionError

    if options.max_batch_size < 1:
        raise InvalidOptionError(f"max batch size must be >= 1, received {options.max_batch_size}")
    inner = export_onnx(source, staging, options, "none")
    repo = staging / "triton"
    version_dir = repo / source.model_name / "1"
    version_dir.mkdir(parents=True)
    inner.path.rename(version_dir / "model.onnx")
    onnx.checker.check_model(str(version_dir / "model.onnx"))
    (repo / source.model_name / "config.pbtxt").write_text(
        config_pbtxt(source.model_name, options.max_batch_size)
    )
    return Produced(
        path=repo,
        input=float_input(),
        output=prob_output(),
        extra={"triton_model": source.model_name, "max_batch_size": options.max_batch_size,
               "platform": "onnxruntime_onnx", "opset": options.opset},  # fmt: skip
    )


register_format(
    ExportFormat(
        name="triton",
        quantizations=("none",),
        default_quantization="none",
        target=lambda model, q: "triton",
        fn=export_triton,
        description="Triton/KServe model repository (ONNX Runtime backend, dynamic batching)",
    )
)
