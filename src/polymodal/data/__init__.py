"""Datasets: the record schema, the loaders, and the synthetic generators."""

from .formats import FORMATS, load_records
from .schema import DataError, Record, RecordSet, SkipLog, write_manifest
from .synthetic import shapes as _shapes  # noqa: F401  (registers the "shapesworld" dataset kind)

__all__ = ["FORMATS", "DataError", "Record", "RecordSet", "SkipLog", "load_records", "write_manifest"]
