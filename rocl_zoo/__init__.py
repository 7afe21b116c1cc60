"""rocl-zoo: adversarially robust self-supervised image encoders (RoCL, NeurIPS 2020).

    import rocl_zoo
    model = rocl_zoo.load("cnn4_rocl.fmnist")          # zoo name, "hf-hub:org/repo[@rev]" or a folder
    rocl_zoo.predict(model, ["shirt.png"], topk=3)
    feats = rocl_zoo.extract_features(model, images)
"""
__version__ = "0.1.0"  # first: the modules imported below may read it

from . import models  # noqa: F401  (registers the architectures with timm)
from .errors import (ConfigError, DataError, IntegrityError, ModelNotFoundError, RoclZooError,
                     WeightsUnavailableError)
from .hub import create_model, list_models, load, save_pretrained
from .inference import extract_features, predict
from .zoo import ZOO, get_entry

__all__ = ["create_model", "list_models", "load", "save_pretrained", "predict", "extract_features", "ZOO",
           "get_entry", "RoclZooError", "ConfigError", "DataError", "IntegrityError", "ModelNotFoundError",
           "WeightsUnavailableError"]
