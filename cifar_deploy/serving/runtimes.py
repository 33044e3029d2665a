"""Runtimes: one predictor per artifact kind, chosen from the file type and its sidecar.

Every predictor takes a batch of raw pixels ``(N, 32, 32, 3)`` (uint8, or float 0..255) and
returns float32 probabilities ``(N, 10)``. Input dtypes and quantization come from the artifact's
metadata sidecar; nothing re-derives them. ONNX Runtime gets explicit providers, and a GPU that is
asked for but absent is an error, never a silent CPU fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _tf
from ..errors import DeviceUnavailableError, InvalidModelError, InvalidOptionError
from ..export.metadata import Metadata, read_sidecar, sha256_of, sidecar_path

DEVICES = ("cpu", "gpu")


def check_images(images) -> np.ndarray:
    """Validate a batch of raw pixels; returns it as an array (dtype kept)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise InvalidOptionError(
            f"expected images of shape (N, 32, 32, 3), received {tuple(images.shape)}"
        )
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise InvalidOptionError(f"expected uint8 or float pixels, received {images.dtype}")
    return images


def default_threads() -> int:
    return os.cpu_count() or 1


@dataclass
class PredictorInfo:
    kind: str  # keras, savedmodel, tflite, onnx
    path: Path
    device: str  # cpu or gpu: where it actually runs
    provider: str  # the runtime/provider actually used
    threads: int | None
    metadata: Metadata | None


class Predictor:
    """Base class: ``predict(images) -> probabilities`` plus what runs it."""

    kind = "base"

    def __init__(self, path: Path, metadata: Metadata | None, device: str, threads: int | None):
        self.path = Path(path)
        self.metadata = metadata
        self.device = device
        self.threads = threads
        self.provider = ""

    @property
    def info(self) -> PredictorInfo:
        return PredictorInfo(self.kind, self.path, self.device, self.provider, self.threads,
                             self.metadata)  # fmt: skip

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        images = check_images(images)
        if len(images) == 0:
            return np.zeros((0, 10), np.float32)
        if len(images) <= batch_size:  # the common case: one call, no concatenation
            return self._run(images).astype(np.float32, copy=False)
        parts = [self._run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _tf_device(device: str) -> str:
    tf = _tf.tf()
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise DeviceUnavailableError("--device gpu: TensorFlow sees no GPU on this machine")
        return "/GPU:0"
    return "/CPU:0"


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        from ..export.source import load_keras_model

        self._device = _tf_device(device)
        self.model = load_keras_model(self.path)
        self.provider = f"tensorflow {self._device}"

    def _run(self, batch):
        tf = _tf.tf()
        with tf.device(self._device):
            return np.asarray(self.model(batch.astype(np.float32), training=False))


class SavedModelPredictor(Predictor):
    kind = "savedmodel"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        tf = _tf.tf()
        self._device = _tf_device(device)
        name = metadata.model_name if metadata else ""
        versions = sorted((self.path / name).glob("[0-9]*"), key=lambda p: int(p.name))
        if not versions:
            raise InvalidModelError(f"{self.path}: no {name}/<version>/ SavedModel inside")
        try:
            self._loaded = tf.saved_model.load(str(versions[-1]))
            self._fn = self._loaded.signatures["serving_default"]
        except Exception as exc:
            raise InvalidModelError(f"{self.path}: cannot load the SavedModel ({exc})") from None
        self.provider = f"tensorflow {self._device}"

    def _run(self, batch):
        tf = _tf.tf()
        with tf.device(self._device):
            return self._fn(images=tf.constant(batch, tf.float32))["probabilities"].numpy()


class TFLitePredictor(Predictor):
    """LiteRT interpreter with explicit ``num_threads``; resizes for each new batch size and
    quantizes float input with the sidecar's scale and zero point."""

    kind = "tflite"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads or default_threads())
        if device == "gpu":
            raise DeviceUnavailableError("--device gpu: the LiteRT runtime here runs on the CPU")
        from ai_edge_litert.interpreter import Interpreter

        try:
            with _tf.quiet_native():
                self._it = Interpreter(model_path=str(self.path), num_threads=self.threads)
        except Exception as exc:
            raise InvalidModelError(f"{self.path}: not a loadable TFLite model ({exc})") from None
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]["index"]
        self._dtype = np.dtype(self._in["dtype"])
        self._batch = None
        # Input quantization from the sidecar (the file's own parameters for a bare artifact).
        spec = self.metadata.input if self.metadata else None
        self._scale = spec.scale if spec and spec.scale else self._in["quantization"][0]
        self._zero = (spec.zero_point if spec and spec.zero_point is not None
                      else self._in["quantization"][1])  # fmt: skip
        self._identity = self._dtype == np.uint8 and self._scale == 1.0 and self._zero == 0
        self.provider = f"litert xnnpack ({self.threads} threads)"

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        if self._dtype == np.float32:
            return batch.astype(np.float32, copy=False)
        if self._identity and batch.dtype == np.uint8:
            return batch  # camera pixels go in untouched
        info = np.iinfo(self._dtype)
        q = np.round(batch.astype(np.float32) / self._scale + self._zero)
        return np.clip(q, info.min, info.max).astype(self._dtype)

    def _run(self, batch):
        if self._batch != len(batch):
            self._it.resize_tensor_input(self._in["index"], [len(batch), 32, 32, 3])
            with _tf.quiet_native():  # XNNPACK announces itself on the first allocation
                self._it.allocate_tensors()
            self._batch = len(batch)
        self._it.set_tensor(self._in["index"], self._quantize(batch))
        self._it.invoke()
        return self._it.get_tensor(self._out)  # get_tensor returns a copy


class OnnxPredictor(Predictor):
    kind = "onnx"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        import onnxruntime as ort

        model_path = self.path
        if self.path.is_dir():  # a Triton repository: <repo>/<model>/1/model.onnx
            found = sorted(self.path.glob("*/[0-9]*/model.onnx"))
            if not found:
                raise InvalidModelError(f"{self.path}: no <model>/<version>/model.onnx inside")
            model_path = found[-1]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if device == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceUnavailableError("--device gpu: this onnxruntime has no CUDA provider")
            # TF32 off: full float32 matmuls on Ampere+ GPUs, so parity holds.
            providers = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            with _tf.quiet_native():
                self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:
            raise InvalidModelError(f"{self.path}: not a loadable ONNX model ({exc})") from None
        used = self.session.get_providers()
        if device == "gpu" and used[0] != "CUDAExecutionProvider":
            # onnxruntime-gpu lists CUDA even without a GPU and silently falls back to the CPU.
            raise DeviceUnavailableError(
                f"--device gpu: onnxruntime could not start CUDA (providers in use: {used})"
            )
        self.provider = used[0]
        self._input = self.session.get_inputs()[0].name

    def _run(self, batch):
        return self.session.run(None, {self._input: batch.astype(np.float32, copy=False)})[0]


# Artifact kind -> predictor class; the kind comes from the file type and the sidecar's format.
PREDICTORS: dict[str, type[Predictor]] = {
    "keras": KerasPredictor,
    "savedmodel": SavedModelPredictor,
    "tflite": TFLitePredictor,
    "onnx": OnnxPredictor,
    "triton": OnnxPredictor,
}
_SUFFIX_KIND: dict[str, str] = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}


def artifact_kind(path: Path, metadata: Metadata | None) -> str:
    if metadata is not None:
        return metadata.format
    kind = _SUFFIX_KIND.get(Path(path).suffix)
    if kind is None:
        raise InvalidModelError(
            f"{path}: unknown artifact type; expected .keras, .tflite, .onnx, or an exported "
            "savedmodel/ or triton/ directory with its .json sidecar"
        )
    return kind


def load_metadata(path: Path, check_hash: bool = True) -> Metadata | None:
    """The sidecar of ``path`` (None for a ``.keras`` file), its hash checked against the file."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file or directory")
    if path.suffix == ".keras":
        return None
    if not sidecar_path(path).exists():
        artifact_kind(path, None)  # raises for types no predictor knows
        return None  # a bare artifact still runs; its input spec comes from the file itself
    metadata = read_sidecar(path)
    if check_hash and sha256_of(path) != metadata.artifact.sha256:
        raise InvalidModelError(
            f"{path}: does not match its sidecar (sha256 {sha256_of(path)[:12]}..., sidecar "
            f"says {metadata.artifact.sha256[:12]}...); re-export it"
        )
    return metadata


def load_predictor(path: Path, device: str = "cpu", threads: int | None = None,
                   metadata: Metadata | None = None) -> Predictor:  # fmt: skip
    """The predictor for an artifact, from its file type and sidecar (``metadata``: the sidecar
    already read and hash-checked by the caller with :func:`load_metadata`)."""
    if device not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}; expected one of: cpu, gpu")
    if metadata is None:
        metadata = load_metadata(Path(path))
    cls: Callable[..., Predictor] = PREDICTORS[artifact_kind(path, metadata)]
    return cls(Path(path), metadata, device=device, threads=threads)
