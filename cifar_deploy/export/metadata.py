"""The one metadata record that travels with every artifact.

A JSON sidecar at ``<artifact>.json`` (and embedded where the format allows: ONNX
``metadata_props``) says what the artifact expects and how it was made. Runtimes and the server
read input dtype, quantization and preprocessing from it; nothing re-derives them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..contract import (
    CLASS_NAMES,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_NAME,
    PREPROCESSING,
    batch_shape,
)
from ..errors import DataFormatError

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"


@dataclass
class TensorSpec:
    name: str
    shape: list[int | None]  # None: dynamic (the batch dimension)
    dtype: str  # numpy dtype name: float32, uint8, int8
    scale: float | None = None  # quantized tensors: real = scale * (q - zero_point)
    zero_point: int | None = None


@dataclass
class FileRecord:
    path: str
    sha256: str
    size_bytes: int


@dataclass
class Metadata:
    model_name: str
    format: str
    quantization: str
    input: TensorSpec
    output: TensorSpec
    artifact: FileRecord
    source: FileRecord | None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    preprocessing: str = PREPROCESSING
    calibration: dict | None = None  # {"samples": N, "seed": S, "split": "train"}
    export_seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    tta: str = "none"  # "flip": the graph averages the image's and its mirror's probabilities
    schema_version: int = SCHEMA_VERSION
    # False for a record built from the file alone (a .keras model, or an artifact without a
    # sidecar): then the file's own tensors, not this record, say what the input takes.
    from_sidecar: bool = field(default=True, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["from_sidecar"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Metadata:
        data = dict(data)
        data["input"] = TensorSpec(**data["input"])
        data["output"] = TensorSpec(**data["output"])
        data["artifact"] = FileRecord(**data["artifact"])
        data["source"] = FileRecord(**data["source"]) if data.get("source") else None
        data.pop("from_sidecar", None)
        return cls(**data)

    @classmethod
    def bare(cls, path: Path, kind: str) -> Metadata:
        """The record of a file without a sidecar: the contract's tensors and labels, the file's
        own hash and size, no source model."""
        path = Path(path)
        return cls(
            model_name=path.stem,
            format=kind,
            quantization="none",
            input=float_input(),
            output=prob_output(),
            artifact=file_record(path),
            source=None,
            from_sidecar=False,
        )


def _artifact_files(directory: Path) -> list[Path]:
    """A directory artifact's files, sorted, without Python bytecode caches (a server that
    imports a ``model.py`` writes ``__pycache__/`` beside it; that changes no artifact)."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = _artifact_files(path) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in _artifact_files(path))
    return path.stat().st_size


def file_record(path: Path, relative_to: Path | None = None) -> FileRecord:
    shown = os.path.relpath(path, relative_to) if relative_to else str(path)
    return FileRecord(path=shown, sha256=sha256_of(path), size_bytes=size_of(path))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sidecar_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def artifact_of(sidecar: Path) -> Path:
    """The artifact a sidecar describes (the inverse of :func:`sidecar_path`)."""
    sidecar = Path(sidecar)
    return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])


def read_sidecar(artifact: Path) -> Metadata:
    path = sidecar_path(artifact)
    try:
        return Metadata.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DataFormatError(f"{artifact}: no metadata sidecar; expected {path}") from None
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise DataFormatError(f"{path}: not a cifar-deploy metadata record ({exc})") from None


def float_input() -> TensorSpec:
    """The contract's input: float32 raw pixels, dynamic batch."""
    return TensorSpec(name=INPUT_NAME, shape=batch_shape(None), dtype="float32")


def prob_output(dtype: str = "float32") -> TensorSpec:
    """The contract's output: class probabilities, dynamic batch."""
    return TensorSpec(name=OUTPUT_NAME, shape=[None, NUM_CLASSES], dtype=dtype)
