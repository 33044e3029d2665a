"""An artifact's quantization as a measured fact: read back from the tensor types in the file,
never taken from what was asked for. ``export`` records the measurement in the sidecar (and
fails when the converter produced something else); every loader compares the file with its
sidecar, so a float32 model labelled int8 is caught wherever it is used.

- TFLite: int8 tensors outnumbering float32 ones is full-integer ``int8`` (activations too);
  a few int8 tensors among float32 ones is ``dynamic`` (weights only); float16 tensors are
  ``float16``; otherwise ``none``.
- ONNX: 8-bit initializers or QuantizeLinear nodes are ``int8``; float16 initializers ``float16``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .. import _tf
from .metadata import repository_file


def _tflite(path: Path) -> str:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with _tf.quiet_native():
        interpreter = Interpreter(model_path=str(path), num_threads=1)  # tensor types only
    counts = Counter(np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details())
    if counts["int8"] > counts["float32"]:
        return "int8"
    if counts["int8"]:
        return "dynamic"
    return "float16" if counts["float16"] else "none"


def _onnx(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    if types & {"INT8", "UINT8"} or "QuantizeLinear" in ops:
        return "int8"
    return "float16" if "FLOAT16" in types else "none"


def _triton(path: Path) -> str:
    return _onnx(repository_file(path, "model.onnx"))


def _triton_python(path: Path) -> str:
    return _tflite(repository_file(path, "model.tflite"))


# Artifact format -> how its quantization is read from the file (formats not listed hold the
# Keras model's own float32 weights).
MEASURES: dict[str, Callable[[Path], str]] = {
    "tflite": _tflite,
    "onnx": _onnx,
    "triton": _triton,
    "triton-python": _triton_python,
}


def measured_quantization(path: Path, fmt: str) -> str:
    """The quantization the file at ``path`` (an artifact of format ``fmt``) actually holds."""
    measure = MEASURES.get(fmt)
    return measure(Path(path)) if measure else "none"
