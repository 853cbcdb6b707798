"""Datasets: the record schema, the loaders, and the synthetic generators."""

from .formats import FORMATS, load_records
from .schema import DataError, Record, RecordSet, SkipLog, write_manifest

__all__ = ["FORMATS", "DataError", "Record", "RecordSet", "SkipLog", "load_records", "write_manifest"]
