"""Serving and checks: one predictor per artifact kind, accuracy parity, benchmarks, server."""

from .runtimes import PREDICTORS, Predictor, check_images, load_predictor

__all__ = ["PREDICTORS", "Predictor", "check_images", "load_predictor"]
