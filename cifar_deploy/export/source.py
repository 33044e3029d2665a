"""The export source: a trained ``.keras`` file, loaded safely, plus what is derived from it.

Finding the newest ``runs/*/best.keras``, validating a model path, loading it with
``safe_mode=True`` (a model file carrying arbitrary code is refused), and lazily producing the
SavedModel that the TFLite converter starts from.
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
from ..contract import INPUT_NAME, INPUT_SHAPE, NUM_CLASSES, OUTPUT_NAME, batch_shape
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


def validate_model_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file; expected a .keras model")
    if path.is_dir() or path.stat().st_size == 0:
        kind = "a directory" if path.is_dir() else "empty"
        raise InvalidModelError(f"{path}: is {kind}; expected a .keras model file")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise InvalidModelError(
            f"{path}: not a Keras 3 model file (truncated, or another format); "
            "expected a .keras archive as written by cifar-deploy train"
        )
    return path


def load_keras_model(path: Path):
    """Load a ``.keras`` file with ``safe_mode=True``; every failure is one InvalidModelError."""
    keras = _tf.keras()
    path = validate_model_file(path)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # zip, h5, config and safe-mode errors all mean "cannot use this"
        raise InvalidModelError(
            f"{path}: cannot be loaded as a Keras model ({one_line(exc)})"
        ) from None


class ExportSource:
    """One trained model and the derived forms that exporters share."""

    def __init__(self, path: Path, tta: str = "none"):
        self.path = validate_model_file(Path(path))
        self.tta = check_tta(tta)  # test-time augmentation baked into every exported graph
        self._tmp: Path | None = None
        self._savedmodels: dict[int | None, Path] = {}

    @cached_property
    def model(self):
        model = load_keras_model(self.path)
        if tuple(model.input_shape[1:]) != INPUT_SHAPE or model.output_shape[-1:] != (NUM_CLASSES,):
            raise InvalidModelError(
                f"{self.path}: expected a model from (N, 32, 32, 3) images to 10 probabilities, "
                f"received {model.input_shape} -> {model.output_shape}"
            )
        return model

    @cached_property
    def model_name(self) -> str:
        """The registry name from the run's ``run.json`` when present, else the Keras name."""
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
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec(batch_shape(batch), tf.float32, INPUT_NAME)])
        def serve(images):
            return {OUTPUT_NAME: in_graph(model, images, self.tta)}

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
