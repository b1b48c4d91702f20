"""The one annotation record every reader produces: a query and its ground-truth (video, moment)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


class AnnotationError(ValueError):
    """A malformed annotation row; the message names the file and line (or JSON key path)."""


@dataclass(frozen=True)
class Moment:
    """One query with its ground-truth video and [start, end] span in seconds.

    duration is the video's length in seconds when the source format gives it (None otherwise);
    extra holds format-specific fields (original captions, annotator spans, scores, ...).
    """

    dataset: str
    split: str
    query_id: str
    query: str
    video_id: str
    start: float
    end: float
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("dataset", "split", "query_id", "video_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Moment.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError(f"Moment.query must be non-empty text (query_id {self.query_id})")
        for name in ("start", "end") + (("duration",) if self.duration is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"Moment.{name} must be a finite number, got {value!r} (query_id {self.query_id})"
                )
        if self.start < 0 or self.end < self.start:
            raise ValueError(
                f"Moment span must satisfy 0 <= start <= end, got [{self.start}, {self.end}] (query_id {self.query_id})"
            )
        if self.duration is not None and (self.duration <= 0 or self.end > self.duration + 1e-6):
            raise ValueError(
                f"Moment span [{self.start}, {self.end}] does not fit in duration {self.duration} (query_id {self.query_id})"
            )

    @property
    def span(self) -> tuple[float, float]:
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
