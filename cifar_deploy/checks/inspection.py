"""``cifar-deploy inspect``: what a mobile engineer checks in a ``.tflite`` before shipping it.

Tensors (name, shape signature, dtype, quantization), operators by type and dtype (and which stay
in float in an "int8" model), the embedded metadata parsed back, which consumers can load the
file, size and activation memory, XNNPACK delegation (which operators fall back to the reference
kernels), and batch-1 latency of the native ``CompiledModel`` runtime beside the Python predictor,
same threads. The GPU delegate is not checked here (no GPU; TensorFlow's
``Analyzer.analyze(gpu_compatibility=True)`` no longer checks anything, tensorflow#77042).
"""

from __future__ import annotations

import gc
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import _tf
from ..contract import MOBILE_INPUT_DTYPES
from ..cpu import cpu_info
from ..errors import CifarDeployError, InvalidModelError, one_line
from ..export.tflite_metadata import read_metadata

# Operators that only move data between int8 and the float edges of a quantized model.
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")
LATENCY_RUNS = 200  # timed batch-1 runs per runtime
WARMUP_RUNS = 20  # untimed runs before them


@dataclass
class TensorInfo:
    name: str
    shape_signature: list[int]  # -1: dynamic
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass
class Inspection:
    path: str
    size_bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: dict[str, int]  # "CONV_2D (int8)" -> count
    float_ops: list[str]  # operators computing in float (beyond the quantize/dequantize edges)
    dynamic_batch: bool
    metadata: dict | None  # the embedded metadata parsed back, or None
    consumers: dict[str, str]  # consumer -> "yes" or why not
    activation_bytes: int  # all non-constant tensors at batch 1 (the arena reuses memory)
    xnnpack_delegated: bool
    not_delegated: list[str]  # operators XNNPACK leaves to the reference kernels
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # runtime -> batch-1 p50
    threads: int = 1
    gpu_delegate: str = "not checked (no GPU on this machine)"
    cpu: str = field(default_factory=lambda: cpu_info().label())  # where the latencies hold

    def to_dict(self) -> dict:
        return asdict(self)


def _tensor(detail: dict) -> TensorInfo:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=detail["name"],
        shape_signature=[int(d) for d in detail.get("shape_signature", detail["shape"])],
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale) if scale else None,
        zero_point=int(zero) if scale else None,
    )


def _interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _tf.quiet_native():
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
    except Exception as exc:
        raise InvalidModelError(f"{path}: not a loadable TFLite model ({one_line(exc)})") from None
    return interpreter


def _ops(interpreter) -> list[tuple[str, str]]:
    """(operator, dtype of its first output) for every operator of the model."""
    return [
        (op["op_name"], np.dtype(op["result_types"][0]).name if op["result_types"] else "-")
        for op in interpreter._get_ops_details()
        if op["op_name"] != "DELEGATE"  # the delegate's own nodes, added at allocation
    ]


def _not_delegated(interpreter) -> tuple[bool, list[str]]:
    """Which operators no delegate took: each DELEGATE node replaced the operators between its
    input and output tensors, found by walking back from its outputs to its inputs."""
    w = interpreter._interpreter
    names = [w.NodeName(i) for i in range(w.NumNodes())]
    inputs = [set(w.NodeInputs(i)) for i in range(len(names))]
    outputs = [list(w.NodeOutputs(i)) for i in range(len(names))]
    original = [i for i, n in enumerate(names) if n != "DELEGATE"]
    producer = {t: i for i in original for t in outputs[i]}
    delegated: set[int] = set()
    for d in (i for i, n in enumerate(names) if n == "DELEGATE"):
        stack = [producer[t] for t in outputs[d] if t in producer]
        while stack:
            node = stack.pop()
            if node not in delegated:
                delegated.add(node)
                stack += [producer[t] for t in inputs[node] - inputs[d] if t in producer]
    left = [names[i] for i in original if i not in delegated]
    return bool(delegated), left


def _activation_bytes(interpreter) -> int:
    """Bytes of the model inputs and every operator output at the allocated (batch-1) shapes:
    an upper bound of the arena, which reuses memory between tensors whose lifetimes do not
    overlap. Weights are not counted."""
    indices = {d["index"] for d in interpreter.get_input_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        indices.update(int(t) for t in op["outputs"])
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return sum(
        int(np.prod(details[i]["shape"])) * np.dtype(details[i]["dtype"]).itemsize
        for i in indices
        if i in details
    )


def consumers(input_dtype: str, metadata: dict | None, dynamic_batch: bool, float_ops) -> dict:
    """Which libraries and toolchains can take this file, and why not where they cannot."""
    mobile = "yes"
    if metadata is None:
        mobile = "no: no embedded TFLite metadata"
    elif input_dtype not in MOBILE_INPUT_DTYPES:
        mobile = f"no: input is {input_dtype}; they take uint8 or float32"
    edge_tpu = "yes (compile with edgetpu_compiler)"
    if float_ops:
        edge_tpu = f"no: float operators ({', '.join(sorted(set(float_ops)))})"
    elif dynamic_batch:
        edge_tpu = "no: dynamic batch; export with --static-batch 1"
    npu = "no: dynamic batch; export with --static-batch 1" if dynamic_batch else "yes"
    return {
        "MediaPipe Tasks": mobile,
        "TFLite Task Library": mobile,
        "ML Kit custom models": mobile,
        "Edge TPU": edge_tpu,
        "NPU compilers": npu,
    }


def _time(fn) -> float:
    """Batch-1 p50 in ms, timed as ``bench`` times every cell (``bench.time_runs``)."""
    from .bench import time_runs

    latencies = time_runs(lambda _: fn(), [None], WARMUP_RUNS, min_time=0.0, min_runs=LATENCY_RUNS)
    return float(np.median(latencies))


def native_latency(path: Path, threads: int) -> float | None:
    """Batch-1 p50 of LiteRT's ``CompiledModel`` (the C++ runtime apps embed; only the run call
    is timed), or None where it cannot load the model."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment, EnvironmentOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        _tf.quiet_native_exit()
        with _tf.quiet_native():
            env = Environment.create(options=EnvironmentOptions())
            options = Options(
                hardware_accelerators=HardwareAccelerator.CPU,
                cpu_options=CpuOptions(num_threads=threads),
            )
            model = CompiledModel.from_file(str(path), environment=env, options=options)
            signature = next(iter(model.get_signature_list()))
            details = model.get_input_tensor_details(signature)
            inputs = {n: model.create_input_buffer_by_name(signature, n) for n in details}
            outputs = {
                n: model.create_output_buffer_by_name(signature, n)
                for n in model.get_output_tensor_details(signature)
            }
            rng = np.random.default_rng(0)
            for name, buffer in inputs.items():
                pixels = rng.integers(0, 256, size=details[name]["shape"])
                buffer.write(pixels.astype(details[name]["dtype"]))
            return _time(lambda: model.run_by_name(signature, inputs, outputs))
    except Exception:  # a model the CompiledModel API refuses: no native figure
        return None


def inspect_tflite(path: Path, threads: int = 1, latency: bool = True) -> Inspection:
    """Everything above for one ``.tflite`` file; a file that is no TFLite model, or a damaged
    one that LiteRT half-reads, raises :class:`InvalidModelError` in one line."""
    try:
        return _inspect(Path(path), threads, latency)
    except CifarDeployError:
        raise
    except Exception as exc:
        raise InvalidModelError(
            f"{path}: a damaged TFLite model ({one_line(exc, with_type=True)})"
        ) from None


def _inspect(path: Path, threads: int, latency: bool) -> Inspection:
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file; expected a .tflite model")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InvalidModelError(f"{path}: not a TFLite model (no TFL3 identifier)")
    interpreter = _interpreter(path, threads)
    inputs = [_tensor(d) for d in interpreter.get_input_details()]
    outputs = [_tensor(d) for d in interpreter.get_output_details()]
    ops = _ops(interpreter)
    quantized = any(dtype in ("int8", "uint8") for _, dtype in ops)
    float_ops = [op for op, dtype in ops if dtype == "float32" and op not in EDGE_OPS and quantized]
    embedded = read_metadata(data)
    metadata = embedded.to_dict() if embedded else None
    dynamic = any(d < 0 for d in inputs[0].shape_signature)
    delegated, left = _not_delegated(interpreter)
    result = Inspection(
        path=str(path),
        size_bytes=len(data),
        inputs=inputs,
        outputs=outputs,
        ops=dict(Counter(f"{op} ({dtype})" for op, dtype in ops)),
        float_ops=float_ops,
        dynamic_batch=dynamic,
        metadata=metadata,
        consumers=consumers(inputs[0].dtype, metadata, dynamic, float_ops),
        activation_bytes=_activation_bytes(interpreter),
        xnnpack_delegated=delegated,
        not_delegated=left,
        threads=threads,
    )
    if latency:
        with _tf.quiet_native():  # LiteRT's accelerator notices
            result.latency_ms = _latencies(path, threads)
            gc.collect()
    return result


def _latencies(path: Path, threads: int) -> dict[str, float | None]:
    from ..runtime.artifacts import load_metadata
    from ..runtime.predictors import load_predictor

    predictor = load_predictor(
        path, threads=threads, metadata=load_metadata(path, check_hash=False)
    )
    shape = predictor.signature.batch_shape(1)
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return {
        "native CompiledModel": native_latency(path, threads),
        "python predictor": _time(lambda: predictor.predict(image)),
    }
