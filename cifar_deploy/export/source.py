"""The export source: a trained Keras model file, loaded safely, plus what is derived from it.

Finding the newest ``runs/*/best.keras``, validating a model path (a Keras 3 ``.keras``, or a
Keras 2 ``.keras`` or legacy ``.h5`` written by ``tf_keras``), loading it with ``safe_mode=True``
(a model file carrying arbitrary code, such as a Lambda layer, is refused), and lazily producing
the SavedModel that the TFLite converter starts from. The graph every format exports is
:meth:`ExportSource.forward`: the declared preprocessing, the model, and a softmax when one was
asked for, so every artifact takes raw pixels and returns probabilities.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from functools import cached_property
from pathlib import Path

from .. import _tf, interrupts
from ..contract import INPUT_NAME, OUTPUT_NAME, Preprocess, Signature, default_class_names
from ..errors import InvalidModelError, one_line
from ..tta import check_tta, in_graph
from .metadata import FileRecord, file_record

SCRATCH_NAME = "cifar_deploy_sm"  # scratch SavedModels in the temp dir, for the converters

log = logging.getLogger(__name__)


def find_latest_checkpoint(runs_dir: Path = Path("runs")) -> Path:
    """The newest ``runs/*/best.keras``."""
    candidates = sorted(Path(runs_dir).glob("*/best.keras"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise InvalidModelError(
            f"no trained model found in {runs_dir}/*/best.keras",
            hint="train first (cifar-deploy train cnn --quick) or pass --model PATH",
        )
    return candidates[-1]


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 file
MODEL_SUFFIXES = (".keras", ".h5")
EXPECTED_FILE = (
    "expected a Keras model file: a .keras archive (Keras 3, or Keras 2 / tf_keras) or a legacy "
    ".h5 file"
)


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def validate_model_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file; {EXPECTED_FILE}")
    if path.is_dir() or path.stat().st_size == 0:
        kind = "a directory" if path.is_dir() else "empty"
        raise InvalidModelError(f"{path}: is {kind}; {EXPECTED_FILE}")
    valid = (path.suffix == ".keras" and zipfile.is_zipfile(path)) or (
        path.suffix == ".h5" and _is_hdf5(path)
    )
    if not valid:
        raise InvalidModelError(
            f"{path}: not a Keras model file (truncated, or another format); {EXPECTED_FILE}"
        )
    return path


def load_keras_model(path: Path):
    """Load a ``.keras`` or ``.h5`` file with ``safe_mode=True`` (Keras 3 reads the files Keras 2
    and ``tf_keras`` write too); every failure is one InvalidModelError."""
    keras = _tf.keras()
    path = validate_model_file(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # zip, h5, config and safe-mode errors all mean "cannot use this"
        reason = one_line(exc)
        if "Lambda" in reason:
            reason = (
                "it holds a Lambda layer, whose Python code cifar-deploy never runs from a file; "
                "replace it with built-in layers (Rescaling, Normalization) or declare the "
                "arithmetic with --preprocess"
            )
        raise InvalidModelError(f"{path}: cannot be loaded as a Keras model ({reason})") from None


def adapted(model, preprocess: Preprocess = Preprocess(), add_softmax: bool = False):
    """``images -> probabilities`` for raw pixels: the declared ``preprocess``, the model, and a
    softmax over its outputs when ``add_softmax`` (a logits head). Works traced or eager."""

    def forward(images, training: bool = False):
        outputs = model(preprocess(images), training=training)
        if add_softmax:
            from .. import _tf

            outputs = _tf.tf().nn.softmax(outputs, axis=-1)
        return outputs

    return forward


class ExportSource:
    """One trained model and the derived forms that exporters share."""

    def __init__(
        self,
        path: Path,
        tta: str = "none",
        preprocess: Preprocess | None = None,
        add_softmax: bool = False,
        class_names: list[str] | None = None,
        name: str | None = None,
    ):
        self.path = validate_model_file(Path(path))
        self._name = name
        self.tta = check_tta(tta)  # test-time augmentation baked into every exported graph
        self.preprocess = preprocess or Preprocess()  # declared; baked into every graph
        self.add_softmax = add_softmax  # a logits head gets a softmax in every graph
        self._class_names = list(class_names) if class_names is not None else None
        self._tmp: Path | None = None
        self._savedmodels: dict[int | None, Path] = {}

    @cached_property
    def model(self):
        model = load_keras_model(self.path)
        self.__dict__["signature"] = Signature.of_keras(model, str(self.path))
        return model

    @cached_property
    def signature(self) -> Signature:
        """The model's input size and class count (read when the model loads)."""
        _ = self.model
        return self.__dict__["signature"]

    @property
    def class_names(self) -> list[str]:
        """Names from ``--labels`` or the dataset when given, else the default for the count."""
        if self._class_names is not None:
            return self._class_names
        return default_class_names(self.signature.classes)

    @property
    def names_given(self) -> bool:
        """Whether class names were set (a labels file or a dataset), not the defaults."""
        return self._class_names is not None

    def set_class_names(self, names: list[str], origin: str) -> None:
        """Take ``names`` (from ``origin``: a labels file, a dataset) for the model's outputs;
        a count that differs from the model's is refused, naming both."""
        if len(names) != self.signature.classes:
            raise InvalidModelError(
                f"{origin} names {len(names)} classes, but {self.path} outputs "
                f"{self.signature.classes}; expected one name per output"
            )
        self._class_names = list(names)

    @property
    def forward(self):
        """Raw pixels -> probabilities: what every exported graph computes (before TTA)."""
        return adapted(self.model, self.preprocess, self.add_softmax)

    @cached_property
    def model_name(self) -> str:
        """The name given, else the registry name from the run's ``run.json`` when present,
        else the Keras name."""
        if self._name is not None:
            return self._name
        run_json = self.path.parent / "run.json"
        if run_json.exists():
            try:
                return str(json.loads(run_json.read_text())["model"])
            except (ValueError, KeyError):
                pass
        return self.model.name

    @cached_property
    def record(self) -> FileRecord:
        return file_record(self.path)  # run_export records the path from the artifact's dir

    def serving_function(self, batch: int | None = None):
        """A ``tf.function`` with the contract's signature: ``images`` -> ``probabilities``
        (``batch``: a static batch size; None keeps the batch dynamic)."""
        tf = _tf.tf()
        shape = self.signature.batch_shape(batch)
        forward = self.forward

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, INPUT_NAME)])
        def serve(images):
            return {OUTPUT_NAME: in_graph(forward, images, self.tta)}

        return serve

    def write_savedmodel(self, target: Path, batch: int | None = None) -> Path:
        """Write a SavedModel with a ``serving_default`` signature to ``target`` (Keras'
        ``ExportArchive``, what ``model.export`` uses; int8 calibration works from it)."""
        keras = _tf.keras()
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint("serving_default", self.serving_function(batch))
        archive.write_out(str(target), verbose=False)
        return target

    def savedmodel_for(self, batch: int | None = None) -> Path:
        """A scratch SavedModel for converters that start from one (TFLite), one per batch
        signature, written once and shared by every conversion from this source."""
        if batch not in self._savedmodels:
            if self._tmp is None:
                scratch = Path(tempfile.gettempdir())
                interrupts.remove_stale(scratch, SCRATCH_NAME)  # left by killed exports
                prefix = interrupts.scratch_prefix(SCRATCH_NAME)
                self._tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))
            name = "savedmodel" if batch is None else f"savedmodel_b{batch}"
            self._savedmodels[batch] = self.write_savedmodel(self._tmp / name, batch)
            interrupts.check()
        return self._savedmodels[batch]

    @property
    def savedmodel_dir(self) -> Path:
        return self.savedmodel_for(None)

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._savedmodels.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
