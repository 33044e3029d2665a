"""The one metadata record that travels with every artifact.

A JSON sidecar at ``<artifact>.json`` (and embedded where the format allows: ONNX
``metadata_props``) says what the artifact expects and how it was made. Runtimes and the server
read input dtype, quantization and preprocessing from it; nothing re-derives them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..data import CLASS_NAMES
from ..errors import DataFormatError

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
PREPROCESSING = (
    "raw RGB pixels 0..255 in NHWC layout (N, 32, 32, 3); resize images to 32x32 RGB first; "
    "normalization happens inside the model"
)


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
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Metadata:
        data = dict(data)
        data["input"] = TensorSpec(**data["input"])
        data["output"] = TensorSpec(**data["output"])
        data["artifact"] = FileRecord(**data["artifact"])
        data["source"] = FileRecord(**data["source"]) if data.get("source") else None
        return cls(**data)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
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
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def file_record(path: Path, relative_to: Path | None = None) -> FileRecord:
    shown = os.path.relpath(path, relative_to) if relative_to else str(path)
    return FileRecord(path=shown, sha256=sha256_of(path), size_bytes=size_of(path))


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"cifar_deploy": __version__, "python": platform.python_version()}
    for dist in ("tensorflow", "keras", "numpy", "tf2onnx", "onnx", "onnxruntime-gpu",
                 "onnxruntime", "ai-edge-litert"):  # fmt: skip
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


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
