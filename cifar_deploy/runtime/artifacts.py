"""Finding artifacts and reading what they are: the one place ``verify``, ``bench``, ``serve`` and
``predict`` turn paths into (artifact, metadata) pairs.

- :func:`default_artifacts`: the newest ``exports/<model>/`` when no artifact is named;
- :func:`collect_artifacts`: export directories expanded into the artifacts their sidecars name;
- :func:`load_metadata`: an artifact's sidecar, hash-checked; a :class:`Metadata` built from the
  file itself for a ``.keras`` model or an artifact without a sidecar, so callers never branch
  on a missing record;
- :func:`resolve_reference`: the Keras model the artifacts were exported from, and
  :func:`reference_metadata`: the preprocessing and softmax its artifacts declare for it;
- :func:`repository_artifacts` and :func:`served_name`: what ``serve DIR`` serves, under which
  names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..contract import Declaration
from ..errors import InvalidModelError, InvalidOptionError
from ..export.metadata import Metadata, artifact_of, read_sidecar, sha256_of, sidecar_path

# File suffix -> artifact kind, for files without a sidecar.
SUFFIX_KIND: dict[str, str] = {
    ".keras": "keras",
    ".h5": "keras",
    ".tflite": "tflite",
    ".onnx": "onnx",
}


def default_artifacts(exports_dir: Path = Path("exports")) -> list[Path]:
    """The newest ``exports/<model>/`` directory that holds exported artifacts."""
    dirs = [d for d in Path(exports_dir).glob("*") if d.is_dir() and list(d.glob("*.json"))]
    if not dirs:
        raise InvalidModelError(
            f"no exported artifacts in {exports_dir}/<model>/",
            hint="export first (cifar-deploy export --format all) or name the artifacts",
        )
    return [max(dirs, key=lambda d: max(p.stat().st_mtime for p in d.glob("*.json")))]


def collect_artifacts(paths: Sequence[Path]) -> list[Path]:
    """Expand directories (``exports/<model>/``) into the artifacts their sidecars describe."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and not sidecar_path(path).exists():
            sidecars = sorted(path.glob("*.json"))
            if not sidecars:
                raise InvalidModelError(f"{path}: no exported artifacts (no *.json sidecars)")
            found.extend(artifact_of(s) for s in sidecars)
        else:
            found.append(path)
    return found


def bare_kind(path: Path) -> str:
    """The artifact kind of a file without a sidecar, from its suffix."""
    kind = SUFFIX_KIND.get(Path(path).suffix)
    if kind is None:
        raise InvalidModelError(
            f"{path}: unknown artifact type; expected .keras, .h5, .tflite, .onnx, or an exported "
            "savedmodel/ or triton/ directory with its .json sidecar"
        )
    return kind


def load_metadata(path: Path, check_hash: bool = True) -> Metadata:
    """The sidecar of ``path``, its hash checked against the file; for a ``.keras`` model or a
    bare artifact, a record built from the file (``from_sidecar`` False)."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file or directory")
    if SUFFIX_KIND.get(path.suffix) == "keras" or not sidecar_path(path).exists():
        return Metadata.bare(path, bare_kind(path))
    metadata = read_sidecar(path)
    if check_hash and (actual := sha256_of(path)) != metadata.artifact.sha256:
        raise InvalidModelError(
            f"{path}: does not match its sidecar (sha256 {actual[:12]}..., sidecar "
            f"says {metadata.artifact.sha256[:12]}...); re-export it"
        )
    return metadata


def resolve_reference(metas: Mapping[Path, Metadata], reference: Path | None) -> Path | None:
    """The Keras model to compare against: ``reference`` when given, else the one source model
    the sidecars name; None when no sidecar names one. Two different sources are refused."""
    if reference is None:
        named = {_source_path(p, m): m.source.sha256 for p, m in metas.items() if m.source}
        sources = sorted(map(str, named))
        if len(sources) > 1:
            raise InvalidOptionError(
                f"the artifacts come from {len(sources)} different models "
                f"({', '.join(sources)}); pass --reference PATH"
            )
        if not sources:
            return None
        reference, recorded = next(iter(named.items()))
        if not reference.exists():
            raise InvalidOptionError(
                f"the artifacts were exported from {reference}, which is not there (the path "
                "is recorded from the artifacts' directory); pass --reference PATH"
            )
        if sha256_of(reference) != recorded:
            raise InvalidOptionError(
                f"{reference}: changed since the artifacts were exported from it (sha256 "
                f"{recorded[:12]}... then); re-export, or pass --reference PATH to compare anyway"
            )
    reference = Path(reference)
    if reference.suffix not in (".keras", ".h5"):
        raise InvalidModelError(
            f"{reference}: the reference must be a Keras model file (.keras or .h5)"
        )
    return reference


def reference_metadata(
    reference: Path, metas: Mapping[Path, Metadata], declared: Declaration | None = None
) -> Metadata:
    """The reference model's record: built from the file, with the preprocessing, the added
    softmax and the class names its artifacts' sidecars declare, so that it answers raw pixels
    exactly as they do. Sidecars that declare different ones are refused; so is a
    command-line ``declared`` that contradicts them (what it leaves unsaid, they say)."""
    record = Metadata.bare(reference, "keras")
    said = {
        (json.dumps(m.source_preprocess, sort_keys=True), m.added_softmax)
        for m in metas.values()
        if m.from_sidecar
    }
    if len(said) > 1:
        raise InvalidOptionError(
            f"the artifacts declare {len(said)} different preprocessings or softmax "
            "settings for one model; verify the artifacts of one export together"
        )
    if said:
        preprocess, record.added_softmax = next(iter(said))
        record.source_preprocess = json.loads(preprocess)
        named = next(m for m in metas.values() if m.from_sidecar)
        record.class_names = list(named.class_names)
        if declared is not None:
            _check_against_sidecars(declared, record)
    declare(record, declared)
    return record


def declare(record: Metadata, declared: Declaration | None) -> None:
    """Apply what the command line said of a Keras model to its record."""
    if declared is None:
        return
    if declared.preprocess is not None:
        record.source_preprocess = declared.preprocess.to_dict()
    record.added_softmax = record.added_softmax or declared.add_softmax


def _check_against_sidecars(declared: Declaration, record: Metadata) -> None:
    sidecars = Declaration(record.declared_preprocess, record.added_softmax)
    same_preprocess = declared.preprocess in (None, sidecars.preprocess)
    same_softmax = not declared.add_softmax or sidecars.add_softmax
    if not (same_preprocess and same_softmax):
        raise InvalidOptionError(
            f"received {declared.flags()}, but the artifacts' sidecars declare "
            f"{sidecars.flags() or '--preprocess raw'}; expected what the export declared",
            hint="leave the flags out: the sidecars say how the Keras model was trained",
        )


def _source_path(artifact: Path, metadata: Metadata) -> Path:
    """The source model a sidecar names: a path from the artifact's directory (an absolute
    path, as older sidecars hold, stays as it is)."""
    return Path(os.path.normpath(Path(artifact).parent / metadata.source.path))


def is_repository(path: Path) -> bool:
    """A directory of exports (``exports/<model>/``) or of export directories (``exports/``),
    as opposed to one artifact (a file, or a ``savedmodel/``/``triton/`` with its sidecar)."""
    path = Path(path)
    return path.is_dir() and not sidecar_path(path).exists()


def repository_artifacts(path: Path) -> list[Path]:
    """Every artifact a sidecar names in ``path`` and in its subdirectories one level down."""
    path = Path(path)
    dirs = [path, *sorted(d for d in path.iterdir() if d.is_dir())]
    found = [artifact_of(s) for d in dirs for s in sorted(d.glob("*.json"))]
    if not found:
        raise InvalidModelError(
            f"{path}: no exported artifacts (no *.json sidecars here or in its subdirectories)"
        )
    return found


def served_name(artifact: Path, metadata: Metadata) -> str:
    """A repository's name for an artifact: its file name, prefixed with the model's name
    when the file name does not start with it (``cnn_int8.tflite``, ``cnn_savedmodel``)."""
    name = Path(artifact).name
    return name if name.startswith(metadata.model_name) else f"{metadata.model_name}_{name}"
