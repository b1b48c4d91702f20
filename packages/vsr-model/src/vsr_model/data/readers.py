"""Readers for the real annotation formats, all producing `Moment` records.

Formats: VERIFIED FIG jsonl (Charades-FIG, DiDeMo-FIG, ActivityNet-FIG), Charades-STA txt,
ActivityNet Captions json, DiDeMo json (5-second chunk indices, several annotators), TVR jsonl.

A malformed row raises `AnnotationError` naming the file and line (JSON formats: the key path). With
`skip_malformed=True` such rows are skipped and listed in `ReadResult.skipped` instead. Bytes that are
not UTF-8 make their row malformed in the line formats (jsonl, txt), and the whole file in the JSON ones. Spans that end
past the video's duration (common in the real files: rounding by annotators) are clipped to the
duration when `clip_to_duration=True` (the original end stays in `extra["end_unclipped"]` and the
count in `ReadResult.clipped`); with False they are errors.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr_model.data.records import AnnotationError, Moment

logger = logging.getLogger(__name__)

DIDEMO_CHUNK_SECONDS = 5.0
FORMATS = ("fig", "charades_sta", "activitynet", "didemo", "tvr")


@dataclass
class SkippedRow:
    location: str  # "file:line" or "file:[key path]"
    reason: str


@dataclass
class ReadResult:
    source: Path
    moments: list[Moment] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    clipped: int = 0

    def summary(self) -> str:
        return f"{self.source}: {len(self.moments)} moments, {len(self.skipped)} skipped, {self.clipped} clipped to duration"


class _Collector:
    """Turns raw rows into Moments with one policy for errors, skips, clipping and duplicate ids."""

    def __init__(self, path: Path, dataset: str, split: str, skip_malformed: bool, clip_to_duration: bool):
        self.result = ReadResult(source=path)
        self.path, self.dataset, self.split = path, dataset, split
        self.skip_malformed, self.clip_to_duration = skip_malformed, clip_to_duration
        self.seen_ids: dict[str, str] = {}

    def add(self, location: str, build: Callable[[], dict[str, Any]]) -> None:
        where = f"{self.path}:{location}"
        try:
            fields = build()
            moment = self._moment(fields)
            if moment.query_id in self.seen_ids:
                raise ValueError(
                    f"duplicate query id {moment.query_id!r} (first at {self.seen_ids[moment.query_id]})"
                )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self.reject(location, f"missing field {exc}" if isinstance(exc, KeyError) else str(exc), exc)
            return
        self.seen_ids[moment.query_id] = where
        self.result.moments.append(moment)

    def reject(self, location: str, reason: str, cause: Exception | None = None) -> None:
        """A malformed row: an error naming file and location, or a recorded skip when asked for."""
        where = f"{self.path}:{location}"
        if not self.skip_malformed:
            raise AnnotationError(f"{where}: {reason}") from cause
        self.result.skipped.append(SkippedRow(where, reason))

    def _moment(self, f: dict[str, Any]) -> Moment:
        start, end, duration = _number(f["start"], "start"), _number(f["end"], "end"), f.get("duration")
        extra = dict(f.get("extra", {}))
        if duration is not None:
            duration = _number(duration, "duration")
            if end > duration and self.clip_to_duration and start < duration:
                extra["end_unclipped"] = end
                end = duration
                self.result.clipped += 1
        return Moment(
            dataset=self.dataset,
            split=self.split,
            query_id=_query_id(f["query_id"]),
            query=_text(f["query"]),
            video_id=_text(f["video_id"]),
            start=start,
            end=end,
            duration=duration,
            extra=extra,
        )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _query_id(value: Any) -> str:
    """A query id as given (str) or as its decimal form (int); anything else (null, a bool, a float,
    an object) is an error rather than a made-up id such as "None"."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"query id must be a non-empty string or an integer, got {value!r}")


def _decode_line(raw: bytes) -> str:
    """One line of a text annotation file; bytes that are not UTF-8 are a ValueError naming where."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 ({exc.reason}) at byte {exc.start} of the line") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected non-empty text, got {value!r}")
    return value.strip()


def _span(value: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a [start, end] pair, got {value!r}")
    return value[0], value[1]


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, Exception | None]]:
    """(line number, parsed row or None, the error that stopped it or None) for each non-blank line;
    lines are decoded one by one, so a bad byte spoils only its own row."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = _decode_line(raw)
            except ValueError as exc:
                yield lineno, None, exc
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, exc


def _read_jsonl(collector: _Collector, build_row: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
    for lineno, row, error in _jsonl_rows(collector.path):

        def build(row: Any = row, error: Exception | None = error, lineno: int = lineno) -> dict[str, Any]:
            if isinstance(error, json.JSONDecodeError):
                raise ValueError(f"invalid JSON: {error}")
            if error is not None:
                raise ValueError(str(error))
            if not isinstance(row, dict):
                raise TypeError(f"expected a JSON object, got {type(row).__name__}")
            return build_row(row, lineno)

        collector.add(str(lineno), build)


def _fig_row(row: dict[str, Any], lineno: int) -> dict[str, Any]:
    start, end = _span(row["time"], "time")
    extra = {k: row[k] for k in ("cog_desc", "fig_desc_score") if k in row}
    return dict(
        query_id=row["desc_id"], query=row["fig_desc"], video_id=row["video"],
        start=start, end=end, duration=row["duration"], extra=extra,
    )  # fmt: skip


def _tvr_row(row: dict[str, Any], lineno: int) -> dict[str, Any]:
    start, end = _span(row["ts"], "ts")
    extra = {k: v for k, v in row.items() if k not in {"desc_id", "desc", "vid_name", "ts", "duration"}}
    return dict(
        query_id=row["desc_id"], query=row["desc"], video_id=row["vid_name"],
        start=start, end=end, duration=row.get("duration"), extra=extra,
    )  # fmt: skip


def _read_charades_sta(collector: _Collector, durations: Mapping[str, float] | None) -> None:
    with collector.path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue

            def build(raw: bytes = raw, lineno: int = lineno) -> dict[str, Any]:
                line = _decode_line(raw)
                head, sep, query = line.rstrip("\r\n").partition("##")
                parts = head.split()
                if not sep or len(parts) != 3:
                    raise ValueError(f"expected 'VIDEO START END##query', got {line.strip()!r}")
                video_id = parts[0]
                duration = durations.get(video_id) if durations is not None else None
                if durations is not None and duration is None:
                    raise ValueError(f"no duration known for video {video_id!r}")
                return dict(
                    query_id=f"{collector.split}-{lineno}", query=query, video_id=video_id,
                    start=parts[1], end=parts[2], duration=duration,
                )  # fmt: skip

            collector.add(str(lineno), build)


def _read_activitynet(collector: _Collector) -> None:
    data = _load_json(collector.path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{collector.path}: expected a JSON object mapping video ids to annotations")
    for video_id, entry in data.items():
        try:
            count = len(entry["sentences"])
            if len(entry["timestamps"]) != count:
                raise ValueError(f"{len(entry['timestamps'])} timestamps for {count} sentences")
        except (KeyError, TypeError, ValueError) as exc:
            collector.reject(
                f"[{video_id!r}]", f"missing field {exc}" if isinstance(exc, KeyError) else str(exc), exc
            )
            continue
        for i in range(count):

            def build(video_id: str = video_id, entry: Any = entry, i: int = i) -> dict[str, Any]:
                start, end = _span(entry["timestamps"][i], "timestamps")
                return dict(
                    query_id=f"{video_id}#{i}", query=entry["sentences"][i], video_id=video_id,
                    start=start, end=end, duration=entry["duration"],
                )  # fmt: skip

            collector.add(f"[{video_id!r}].timestamps[{i}]", build)


def didemo_consensus(times: list[list[int]]) -> tuple[int, int]:
    """The annotators' most frequent chunk span; ties go to the earliest-listed span."""
    counts = Counter(tuple(t) for t in times)
    best = max(counts.values())
    for t in times:
        if counts[tuple(t)] == best:
            return int(t[0]), int(t[1])
    raise ValueError("no annotator spans")


def _read_didemo(collector: _Collector, durations: Mapping[str, float] | None) -> None:
    data = _load_json(collector.path)
    if not isinstance(data, list):
        raise AnnotationError(f"{collector.path}: expected a JSON list of annotations")
    for i, row in enumerate(data):

        def build(row: Any = row) -> dict[str, Any]:
            if not isinstance(row, dict):
                raise TypeError(f"expected a JSON object, got {type(row).__name__}")
            times = row["times"]
            if not isinstance(times, list) or not times:
                raise ValueError(f"times must be a non-empty list of [start_chunk, end_chunk], got {times!r}")
            for t in times:
                s, e = _span(t, "times entry")
                if not (isinstance(s, int) and isinstance(e, int) and 0 <= s <= e):
                    raise ValueError(f"chunk span must be integers 0 <= start <= end, got {t!r}")
            s, e = didemo_consensus(times)
            video_id = row["video"]
            duration = durations.get(video_id) if durations is not None else None
            if durations is not None and duration is None:
                raise ValueError(f"no duration known for video {video_id!r}")
            return dict(
                query_id=row["annotation_id"], query=row["description"], video_id=video_id,
                start=s * DIDEMO_CHUNK_SECONDS, end=(e + 1) * DIDEMO_CHUNK_SECONDS, duration=duration,
                extra={"annotator_times": times},
            )  # fmt: skip

        collector.add(f"[{i}]", build)


def _load_json(path: Path) -> Any:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(f"{path}:{line}: invalid UTF-8 ({exc.reason}) at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def infer_format(path: Path) -> str:
    """Guess the format from the file name and first record."""
    if path.suffix == ".txt":
        return "charades_sta"
    if path.suffix == ".jsonl":
        for _, row, _ in _jsonl_rows(path):
            if isinstance(row, dict) and "fig_desc" in row:
                return "fig"
            if isinstance(row, dict) and "vid_name" in row:
                return "tvr"
            break
    if path.suffix == ".json":
        data = _load_json(path)
        return "didemo" if isinstance(data, list) else "activitynet"
    raise AnnotationError(f"{path}: cannot tell the annotation format; pass one of {FORMATS}")


def read_moments(
    path: str | Path,
    fmt: str | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    durations: Mapping[str, float] | None = None,
    skip_malformed: bool = False,
    clip_to_duration: bool = True,
) -> ReadResult:
    """Read an annotation file into Moments.

    fmt: one of FORMATS (inferred when None). dataset / split default to parts of the file name
    (e.g. "charades_fig_test.jsonl" -> dataset "charades_fig", split "test"). durations: video id ->
    seconds, for formats without durations (Charades-STA, DiDeMo); without it those Moments have none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; expected one of {FORMATS}")
    stem_dataset, _, stem_split = path.stem.rpartition("_")
    collector = _Collector(
        path,
        dataset or stem_dataset or path.stem,
        split or stem_split or "all",
        skip_malformed,
        clip_to_duration,
    )
    if fmt == "fig":
        _read_jsonl(collector, _fig_row)
    elif fmt == "tvr":
        _read_jsonl(collector, _tvr_row)
    elif fmt == "charades_sta":
        _read_charades_sta(collector, durations)
    elif fmt == "activitynet":
        _read_activitynet(collector)
    else:
        _read_didemo(collector, durations)
    result = collector.result
    if result.skipped:
        logger.warning("%s", result.summary())
    return result


def write_tvr_jsonl(path: str | Path, moments: list[Moment]) -> Path:
    """Write Moments as TVR-style jsonl (desc_id, desc, vid_name, duration, ts, plus extra fields)."""
    from vsr_model.fileio import atomic_write_text

    lines = []
    for m in moments:
        row = {
            "desc_id": m.query_id,
            "desc": m.query,
            "vid_name": m.video_id,
            "duration": m.duration,
            "ts": [m.start, m.end],
        }
        row.update(m.extra)
        lines.append(json.dumps(row))
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
