"""The persistent embedding index and the pipeline that fills it."""

from .pipeline import BuildConfig, BuildReport, build_index
from .store import Hit, Index, ModelMismatchError

__all__ = ["BuildConfig", "BuildReport", "Hit", "Index", "ModelMismatchError", "build_index"]
