"""Models: the aligned dual encoder, and the factory that builds them from presets."""

from .aligned import AlignedModel
from .factory import create_model

__all__ = ["AlignedModel", "create_model"]
