"""Annotation records and readers, and the synthetic VCMR benchmark generator."""

from vsr_model.data.readers import FORMATS, ReadResult, SkippedRow, read_moments, write_tvr_jsonl
from vsr_model.data.records import AnnotationError, Moment

__all__ = [
    "FORMATS",
    "AnnotationError",
    "Moment",
    "ReadResult",
    "SkippedRow",
    "read_moments",
    "write_tvr_jsonl",
]
