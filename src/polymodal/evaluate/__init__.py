"""Evaluation: retrieval, zero-shot classification, compositional probes, and the HTML report."""

from .run import evaluate

__all__ = ["evaluate"]
