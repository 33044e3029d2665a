"""SavedModel in TensorFlow Serving's layout: ``savedmodel/<model>/1/saved_model.pb``.

The ``serving_default`` signature takes ``images`` (float32, [None, 32, 32, 3], raw pixels 0..255)
and returns ``probabilities`` (float32, [None, 10]). Point TF Serving's ``model_base_path`` at
``savedmodel/<model>``.
"""

from __future__ import annotations

from pathlib import Path

from .base import ExportFormat, ExportOptions, Produced, register_format
from .metadata import float_input, prob_output
from .source import ExportSource

VERSION = 1  # TF Serving loads the highest numeric version directory


def export_savedmodel(
    source: ExportSource, staging: Path, options: ExportOptions, quantization: str
) -> Produced:
    repo = staging / "savedmodel"
    source.write_savedmodel(repo / source.model_name / str(VERSION))
    return Produced(
        path=repo,
        input=float_input(source.signature),
        output=prob_output("float32", source.signature),
        extra={
            "signature": "serving_default",
            "tf_serving_model_base_path": f"savedmodel/{source.model_name}",
            "version": VERSION,
        },
    )


register_format(
    ExportFormat(
        name="savedmodel",
        quantizations=("none",),
        default_quantization="none",
        target=lambda model, q, options=None: "savedmodel",
        fn=export_savedmodel,
        description="TensorFlow SavedModel, TF Serving layout, serving_default signature",
    )
)
