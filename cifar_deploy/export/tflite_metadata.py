"""TFLite Model Metadata, embedded in the ``.tflite`` file itself, for mobile libraries.

MediaPipe Tasks, the TFLite Task Library, ML Kit custom models and Android Studio's ML Model
Binding read a ``TFLITE_METADATA`` buffer inside the model (schema ``metadata_schema.fbs``, file
identifier ``M001``) and the label file zip-appended to the flatbuffer; none of them read our JSON
sidecar. This module writes and reads both with the ``flatbuffers`` runtime, the TFLite model
schema that ``ai_edge_litert`` ships, and the vendored generated metadata schema: no
``tflite-support`` (unmaintained) and no MediaPipe writer (does not import in current wheels).

What is written: model name, description, version, author and license; for the input, RGB
``ImageProperties`` of the contract's size, ``NormalizationOptions`` mean 0 and std 1 (the graph
takes raw 0..255 pixels and normalizes inside, so a consumer must feed pixels unchanged), value
range 0..255; for the output, ``FeatureProperties``, value range 0..1, and ``labels.txt`` as a
``TENSOR_AXIS_LABELS`` file. The interpreter ignores all of it: outputs stay bit-identical.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass, field

import flatbuffers

from .. import __version__
from ..contract import INPUT_NAME, OUTPUT_NAME, Signature
from ..errors import InvalidModelError

METADATA_NAME = "TFLITE_METADATA"  # the model buffer name every metadata reader looks for
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"  # every field written here is in the 1.0.0 schema
# Mean and std a consumer applies before feeding float input: identity, since the model
# normalizes inside its graph. Getting this wrong silently ruins accuracy (tested).
NORMALIZATION_MEAN = (0.0, 0.0, 0.0)
NORMALIZATION_STD = (1.0, 1.0, 1.0)
AUTHOR = "cifar-deploy"
LICENSE = "Apache-2.0"


@dataclass
class EmbeddedMetadata:
    """What a ``.tflite`` file says about itself, parsed back."""

    name: str
    description: str
    version: str
    author: str
    license: str
    min_parser_version: str
    input_name: str
    color_space: str  # "RGB", ...
    image_size: tuple[int, int] | None  # (width, height)
    normalization_mean: list[float] = field(default_factory=list)
    normalization_std: list[float] = field(default_factory=list)
    input_range: tuple[float, float] | None = None
    output_name: str = ""
    label_file: str | None = None
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _schemas():
    from ai_edge_litert import schema_py_generated as model_fb

    from . import _tflite_metadata_schema as meta_fb

    return model_fb, meta_fb


def build_metadata(
    model_name: str, quantization: str, class_names: list[str], signature: Signature = Signature()
) -> bytes:
    """The ``ModelMetadata`` flatbuffer for an image classifier with the contract's tensors
    (``signature``: the model's input size)."""
    _, fb = _schemas()
    image = fb.ImagePropertiesT()
    image.colorSpace = fb.ColorSpaceType.RGB
    image.defaultSize = fb.ImageSizeT()
    image.defaultSize.width, image.defaultSize.height = signature.width, signature.height
    normalization = fb.ProcessUnitT()
    normalization.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = fb.NormalizationOptionsT()
    normalization.options.mean = list(NORMALIZATION_MEAN)
    normalization.options.std = list(NORMALIZATION_STD)
    images = _tensor(fb, INPUT_NAME, "Raw RGB pixels 0..255; normalized inside the model.")
    images.content.contentPropertiesType = fb.ContentProperties.ImageProperties
    images.content.contentProperties = image
    images.processUnits = [normalization]
    images.stats = _range(fb, 0.0, 255.0)
    labels = fb.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "The class names, one per line, in output order."
    labels.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    probs = _tensor(fb, OUTPUT_NAME, f"Probabilities of the {len(class_names)} classes.")
    probs.content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    probs.content.contentProperties = fb.FeaturePropertiesT()
    probs.stats = _range(fb, 0.0, 1.0)
    probs.associatedFiles = [labels]
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [images], [probs]
    model = fb.ModelMetadataT()
    model.name = model_name
    model.description = (
        f"Image classifier ({model_name}, quantization {quantization}): "
        f"{len(class_names)} classes from a {signature.width}x{signature.height} RGB image."
    )
    model.version = __version__
    model.author, model.license = AUTHOR, LICENSE
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _tensor(fb, name: str, description: str):
    tensor = fb.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = fb.ContentT()
    return tensor


def _range(fb, low: float, high: float):
    stats = fb.StatsT()
    stats.min, stats.max = [low], [high]
    return stats


def embed(model: bytes, metadata: bytes, class_names: list[str]) -> bytes:
    """``model`` with ``metadata`` as its ``TFLITE_METADATA`` buffer (replacing an earlier one)
    and ``labels.txt`` zip-appended, as the metadata spec describes."""
    model_fb, _ = _schemas()
    if zipfile.is_zipfile(io.BytesIO(model)):
        model = _flatbuffer_part(model)
    tree = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAs(model, 0))
    buffer = model_fb.BufferT()
    buffer.data = list(metadata)
    tree.metadata = [m for m in tree.metadata or [] if _name(m.name) != METADATA_NAME]
    tree.buffers = tree.buffers or []
    tree.buffers.append(buffer)
    entry = model_fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    builder.Finish(tree.Pack(builder), MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, labels_text(class_names))
    return out.getvalue()


def labels_text(class_names: list[str]) -> str:
    """The label file: one class name per line, in output order."""
    return "".join(f"{name}\n" for name in class_names)


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _flatbuffer_part(data: bytes) -> bytes:
    """The model without its zip-appended files: everything before the first local header."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        offsets = [info.header_offset for info in archive.infolist()]
    return data[: min(offsets)] if offsets else data


def metadata_buffer(model: bytes) -> bytes | None:
    """The raw ``TFLITE_METADATA`` buffer of a model, or None."""
    model_fb, _ = _schemas()
    try:
        root = model_fb.Model.GetRootAs(model, 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if _name(entry.Name()) == METADATA_NAME:
                return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    except Exception as exc:  # not a flatbuffer at all, or a truncated one
        raise InvalidModelError(
            f"not a readable TFLite flatbuffer ({type(exc).__name__})"
        ) from None
    return None


def read_metadata(model: bytes) -> EmbeddedMetadata | None:
    """The embedded metadata and labels of a ``.tflite`` file's bytes (None: it has none)."""
    raw = metadata_buffer(model)
    if raw is None:
        return None
    _, fb = _schemas()
    if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
        raise InvalidModelError("the TFLITE_METADATA buffer is not a metadata flatbuffer")
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(raw, 0))
    subgraph = meta.subgraphMetadata[0]
    images, probs = subgraph.inputTensorMetadata[0], subgraph.outputTensorMetadata[0]
    image = images.content.contentProperties if images.content else None
    norm = next(
        (
            u.options
            for u in images.processUnits or []
            if isinstance(u.options, fb.NormalizationOptionsT)
        ),
        None,
    )
    label_file = next(
        (
            _name(f.name)
            for f in probs.associatedFiles or []
            if f.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
        ),
        None,
    )
    spaces = {v: k for k, v in vars(fb.ColorSpaceType).items() if not k.startswith("_")}
    return EmbeddedMetadata(
        name=_name(meta.name),
        description=_name(meta.description),
        version=_name(meta.version),
        author=_name(meta.author),
        license=_name(meta.license),
        min_parser_version=_name(meta.minParserVersion),
        input_name=_name(images.name),
        color_space=spaces.get(getattr(image, "colorSpace", 0), "UNKNOWN"),
        image_size=(image.defaultSize.width, image.defaultSize.height)
        if getattr(image, "defaultSize", None)
        else None,
        normalization_mean=[float(v) for v in norm.mean] if norm is not None else [],
        normalization_std=[float(v) for v in norm.std] if norm is not None else [],
        input_range=(float(images.stats.min[0]), float(images.stats.max[0]))
        if images.stats is not None and images.stats.min is not None
        else None,
        output_name=_name(probs.name),
        label_file=label_file,
        labels=_labels(model, label_file),
    )


def _labels(model: bytes, label_file: str | None) -> list[str]:
    if label_file is None or not zipfile.is_zipfile(io.BytesIO(model)):
        return []
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        if label_file not in archive.namelist():
            return []
        return archive.read(label_file).decode().splitlines()
