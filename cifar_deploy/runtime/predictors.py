"""Runtimes: one predictor per artifact kind, chosen from the file type and its sidecar.

Every predictor takes a batch of raw pixels ``(N, H, W, 3)`` (uint8, or float 0..255; ``(N, 32,
32, 3)`` for our own models) and returns float32 probabilities ``(N, classes)``. Input dtypes
and quantization come from the artifact's metadata (its sidecar, or the file itself when it has
none); nothing re-derives them. ONNX Runtime gets explicit providers, and a GPU that is asked for
but absent is an error, never a silent CPU fallback.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import _tf
from ..contract import OUTPUT_NAME, Signature
from ..errors import (
    CifarDeployError,
    DeviceUnavailableError,
    InvalidModelError,
    InvalidOptionError,
    one_line,
)
from ..export.metadata import Metadata, repository_file
from .artifacts import load_metadata

DEVICES = ("cpu", "gpu")


def check_images(images, signature: Signature = Signature()) -> np.ndarray:
    """Validate a batch of raw pixels; returns it as an array (dtype kept)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != signature.image_shape:
        raise InvalidOptionError(
            f"expected images of shape (N, {', '.join(map(str, signature.image_shape))}), "
            f"received {tuple(images.shape)}"
        )
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise InvalidOptionError(f"expected uint8 or float pixels, received {images.dtype}")
    return images


def default_threads() -> int:
    return os.cpu_count() or 1


class Predictor:
    """Base class: ``predict(images) -> probabilities`` plus what runs it."""

    kind = "base"
    takes_threads = False  # True: a per-model CPU thread count applies (LiteRT, ONNX Runtime)

    def __init__(self, path: Path, metadata: Metadata, device: str, threads: int | None):
        self.path = Path(path)
        self.metadata = metadata
        self.device = device
        self.threads = threads
        self.provider = ""

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.class_names)

    @property
    def signature(self) -> Signature:
        return self.metadata.signature

    def file_signature(self) -> Signature | None:
        """The input size and class count the loaded file itself declares (None: unknown)."""
        return None

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        images = check_images(images, self.signature)
        if len(images) == 0:
            return np.zeros((0, self.signature.classes), np.float32)
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
    """A Keras model file, with the preprocessing and softmax its artifacts declare (the
    metadata's ``source_preprocess`` and ``added_softmax``) applied around it, so it answers
    raw pixels as they do."""

    kind = "keras"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        from ..export.source import adapted, load_keras_model
        from ..reference import compiled

        self._device = _tf_device(device)
        self.model = load_keras_model(self.path)
        self._signature = Signature.of_keras(self.model, str(self.path))
        forward = adapted(self.model, metadata.declared_preprocess, metadata.added_softmax)
        # one traced graph, as training's test evaluation
        self._call = compiled(forward, self._signature.image_shape)
        self.provider = f"tensorflow {self._device}"

    def file_signature(self) -> Signature:
        return self._signature

    def _run(self, batch):
        tf = _tf.tf()
        with tf.device(self._device):
            return np.asarray(self._call(batch.astype(np.float32)))


class SavedModelPredictor(Predictor):
    kind = "savedmodel"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        tf = _tf.tf()
        self._device = _tf_device(device)
        name = metadata.model_name
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
            return self._fn(images=tf.constant(batch, tf.float32))[OUTPUT_NAME].numpy()


class TFLitePredictor(Predictor):
    """LiteRT interpreter with explicit ``num_threads``; resizes for each new batch size and
    quantizes float input with the sidecar's scale and zero point."""

    kind = "tflite"
    takes_threads = True

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
        spec = self.metadata.input
        file_scale, file_zero = self._in["quantization"]
        self._scale = spec.scale if spec.scale else file_scale
        self._zero = spec.zero_point if spec.zero_point is not None else file_zero
        self._identity = self._dtype == np.uint8 and self._scale == 1.0 and self._zero == 0
        # A static-batch model (--static-batch N) runs N images at a time, the last batch padded.
        first = int(self._in["shape_signature"][0])
        self._static = first if first > 0 else None
        self.provider = f"litert xnnpack ({self.threads} threads)"

    def file_signature(self) -> Signature | None:
        inp = [int(d) for d in self._in["shape_signature"]]
        out = [int(d) for d in self._it.get_output_details()[0]["shape_signature"]]
        if len(inp) != 4 or len(out) != 2 or min(inp[1:] + out[1:]) < 1:
            return None
        return Signature(height=inp[1], width=inp[2], classes=out[1])

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        if self._dtype == np.float32:
            return batch.astype(np.float32, copy=False)
        if self._identity and batch.dtype == np.uint8:
            return batch  # camera pixels go in untouched
        info = np.iinfo(self._dtype)
        q = np.round(batch.astype(np.float32) / self._scale + self._zero)
        return np.clip(q, info.min, info.max).astype(self._dtype)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        return super().predict(images, batch_size=self._static or batch_size)

    def _run(self, batch):
        if self._static is not None and len(batch) < self._static:
            padding = np.zeros((self._static - len(batch), *batch.shape[1:]), batch.dtype)
            return self._run(np.concatenate([batch, padding]))[: len(batch)]
        if self._batch != len(batch):
            self._it.resize_tensor_input(self._in["index"], list(batch.shape))
            with _tf.quiet_native():  # XNNPACK announces itself on the first allocation
                self._it.allocate_tensors()
            self._batch = len(batch)
        self._it.set_tensor(self._in["index"], self._quantize(batch))
        self._it.invoke()
        return self._it.get_tensor(self._out)  # get_tensor returns a copy


class TritonPythonPredictor(TFLitePredictor):
    """A python-backend Triton repository: its ``model.tflite``, run as Triton's ``model.py``
    runs it (LiteRT), so verify and bench check what Triton serves."""

    kind = "triton-python"

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(repository_file(path, "model.tflite"), metadata, device, threads)
        self.path = Path(path)


class OnnxPredictor(Predictor):
    kind = "onnx"
    takes_threads = True

    def __init__(self, path, metadata, device="cpu", threads=None):
        super().__init__(path, metadata, device, threads)
        import onnxruntime as ort

        model_path = self.path
        if self.path.is_dir():  # a Triton repository: <repo>/<model>/1/model.onnx
            model_path = repository_file(self.path, "model.onnx")
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

    def file_signature(self) -> Signature | None:
        inp, out = self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape
        dims = [*inp[1:], *out[1:]]
        if len(inp) != 4 or len(out) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        return Signature(height=inp[1], width=inp[2], classes=out[1])

    def _run(self, batch):
        return self.session.run(None, {self._input: batch.astype(np.float32, copy=False)})[0]


# Artifact kind -> predictor class; the kind is the sidecar's format (or the file's suffix).
PREDICTORS: dict[str, type[Predictor]] = {
    "keras": KerasPredictor,
    "savedmodel": SavedModelPredictor,
    "tflite": TFLitePredictor,
    "onnx": OnnxPredictor,
    "triton": OnnxPredictor,
    "triton-python": TritonPythonPredictor,
}


def load_predictor(
    path: Path, device: str = "cpu", threads: int | None = None, metadata: Metadata | None = None
) -> Predictor:
    """The predictor for an artifact (``metadata``: its record, when the caller has read and
    hash-checked it already with :func:`load_metadata`)."""
    if device not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}; expected one of: cpu, gpu")
    path = Path(path)
    metadata = metadata if metadata is not None else load_metadata(path)
    try:
        if metadata.from_sidecar:
            _check_quantization(path, metadata)
        predictor = PREDICTORS[metadata.format](path, metadata, device=device, threads=threads)
        if not metadata.from_sidecar and (own := predictor.file_signature()) is not None:
            metadata.adopt(own)  # a bare file: its own sizes, not the contract's defaults
        _check_probe(predictor)
    except CifarDeployError:
        raise
    except Exception as exc:  # a damaged file the runtime half-loads: one line, exit 2
        raise InvalidModelError(
            f"{path}: cannot be loaded as {metadata.format} ({one_line(exc, with_type=True)})"
        ) from None
    return predictor


def probe_images(signature: Signature) -> np.ndarray:
    """Two probe images (mid-grey and a vertical gradient) at the model's size: every artifact
    must answer them with a probability row each before it counts as loaded."""
    shape = signature.image_shape
    gradient = np.linspace(0, 248, signature.height).astype(np.uint8)[:, None, None]
    return np.stack([np.full(shape, 128, np.uint8), np.broadcast_to(gradient, shape)])


PROBABILITY_SUM_TOLERANCE = 0.1  # int8 outputs are multiples of 1/256: their sums stray a little


def _check_probe(predictor: Predictor) -> None:
    """One trial inference: a damaged model that still loads, or a Keras model that outputs
    logits rather than probabilities, fails here instead of at its first real request."""
    signature = predictor.signature
    probe = probe_images(signature)
    probs = np.asarray(predictor.predict(probe))
    where = predictor.path
    if probs.shape != (len(probe), signature.classes):
        raise InvalidModelError(
            f"{where}: answers a ({len(probe)}, {signature.height}, {signature.width}, 3) batch "
            f"with shape {probs.shape}; expected ({len(probe)}, {signature.classes}) "
            "probabilities"
        )
    if not np.isfinite(probs).all():
        raise InvalidModelError(f"{where}: answers a probe batch with NaN or infinite values")
    sums = probs.sum(axis=1)
    if (
        probs.min() < -1e-6
        or probs.max() > 1 + 1e-6
        or np.abs(sums - 1).max() > PROBABILITY_SUM_TOLERANCE
    ):
        raise InvalidModelError(
            f"{where}: outputs are not probabilities (values {probs.min():.3g}.."
            f"{probs.max():.3g}, row sums {sums.min():.3g}..{sums.max():.3g}); cifar-deploy "
            "runs models whose last layer is a softmax",
            hint="export it with --add-softmax, or add a softmax activation to the model's "
            "last layer and save it again",
        )


def _check_quantization(path: Path, metadata: Metadata) -> None:
    from ..export.quantization import measured_quantization

    actual = measured_quantization(path, metadata.format)
    if actual != metadata.quantization:
        raise InvalidModelError(
            f"{path}: its sidecar says quantization {metadata.quantization!r}, but the file's "
            f"tensors are {actual!r}; re-export it"
        )
