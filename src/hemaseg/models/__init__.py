"""Model families. Each module registers its constructors into the leaf registry
(:mod:`hemaseg.models.registry`) when imported; importing this package imports them all."""
from hemaseg.models import classifier, maskrcnn, unet  # noqa: F401  (each registers its families on import)
from hemaseg.models.registry import create_model, list_models, load_card, load_model, register_model, save_model

__all__ = ["create_model", "list_models", "load_card", "load_model", "register_model", "save_model"]
