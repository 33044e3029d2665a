"""Serving and checks, one module per verb.

- :mod:`.artifacts`: finding artifacts and reading their metadata (every verb below uses it);
- :mod:`.runtimes`: one predictor per artifact kind;
- :mod:`.verify`: ``cifar-deploy verify``, accuracy parity against the Keras model;
- :mod:`.bench`: ``cifar-deploy bench``, latency and throughput;
- :mod:`.predict`: ``cifar-deploy predict``, classifying image files;
- :mod:`.server` (+ :mod:`.protocol`, :mod:`.batcher`, :mod:`.images`): ``cifar-deploy serve``.
"""

from .artifacts import load_metadata
from .runtimes import PREDICTORS, Predictor, check_images, load_predictor

__all__ = ["PREDICTORS", "Predictor", "check_images", "load_metadata", "load_predictor"]
