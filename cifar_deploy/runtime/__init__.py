"""The artifact runtime: finding exported artifacts and their sidecars (:mod:`.artifacts`) and
running any of them (:mod:`.predictors`: one predictor per artifact kind). The server and the
offline checks both load artifacts through here.
"""

from .artifacts import load_metadata
from .predictors import PREDICTORS, Predictor, check_images, load_predictor

__all__ = ["PREDICTORS", "Predictor", "check_images", "load_metadata", "load_predictor"]
