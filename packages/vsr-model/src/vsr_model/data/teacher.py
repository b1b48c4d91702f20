"""Teachers: the rationales (and HQR rewrites) Stage 1 trains the policy to write.

A verify rationale says what the shown video contains and how it compares with the query; a policy that
learns to write it learns to read frames. Three sources, in this order:

- `RationaleFile`: an external jsonl written by any teacher VLM, one row per (query, shown video)::

      {"query_id": "...", "video_id": "...", "rationale": "...", "rewrite": "..."}   (rewrite optional)

- `SyntheticTeacher`: exact ground truth of the synthetic benchmark (every event's size, colour,
  object, action, background and time): the closest event of the shown video to the query, and for a
  mismatch which requirements it misses; for a match, the event's span;
- the fixed sentence (`default_rationale`), counted and logged: it carries no evidence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vsr_model.data.records import Moment

logger = logging.getLogger(__name__)

ATTRIBUTES = ("size", "color", "object", "action")
RATIONALE_STYLES = ("compact", "full")


def default_rationale(matched: bool) -> str:
    """The rationale when no teacher knows the pair: a template, short because it carries no evidence."""
    if matched:
        return "The video shows the moment the query describes."
    return "The video does not show the moment the query describes."


class Teacher(Protocol):
    def rationale(self, moment: Moment, shown_video: str) -> str | None: ...

    def rewrite(self, moment: Moment, shown_video: str) -> str | None: ...


def _seconds(value: float) -> str:
    return f"{value:.1f}"


@dataclass(frozen=True)
class _Event:
    size: str
    color: str
    object: str
    action: str
    start: float
    end: float

    def words(self) -> str:
        from vsr_model.data.synth_world import ACTION_PHRASES

        return f"{self.size} {self.color} {self.object} {ACTION_PHRASES[self.action][0]}"


class SyntheticTeacher:
    """Rationales from the synthetic benchmark's exact ground truth (vsr_model.data.synth).

    `style` compact: the query restated in canonical words (so the policy learns to read paraphrases),
    the closest event of the shown video (span, canonical words, background) and the verdict's reason;
    full: every event of the video first, then the same."""

    def __init__(self, benchmark: str | Path, style: str = "compact") -> None:
        from vsr_model.data.readers import read_moments

        if style not in RATIONALE_STYLES:
            raise ValueError(f"rationale style must be one of {RATIONALE_STYLES}, got {style!r}")
        self.style = style
        root = Path(benchmark)
        rows = [json.loads(line) for line in (root / "videos.jsonl").read_text().splitlines() if line.strip()]
        self.backgrounds = {str(r["video_id"]): str(r["background"]) for r in rows if "background" in r}
        if not self.backgrounds:
            raise ValueError(f"{root}/videos.jsonl names no backgrounds: not a synthetic benchmark")
        self.events: dict[str, list[_Event]] = {}
        for path in sorted((root / "annotations").glob("*.jsonl")):
            for m in read_moments(path).moments:
                self.events.setdefault(m.video_id, []).append(self._event(m))
        for events in self.events.values():
            events.sort(key=lambda e: e.start)

    @staticmethod
    def _event(moment: Moment) -> _Event:
        extra = moment.extra or {}
        missing = [a for a in ATTRIBUTES if a not in extra]
        if missing:
            raise ValueError(f"query {moment.query_id!r} lacks synthetic attributes {missing}")
        return _Event(*(str(extra[a]) for a in ATTRIBUTES), float(moment.start), float(moment.end))

    def knows(self, moment: Moment, shown_video: str) -> bool:
        return shown_video in self.events and all(a in (moment.extra or {}) for a in ATTRIBUTES)

    def closest(self, moment: Moment, shown_video: str) -> _Event:
        """The shown video's event matching most of the query's attributes (the earliest among ties)."""
        query = self._event(moment)
        return max(
            self.events[shown_video],
            key=lambda e: sum(getattr(e, a) == getattr(query, a) for a in ATTRIBUTES),
        )

    def rationale(self, moment: Moment, shown_video: str) -> str | None:
        from vsr_model.data.synth_world import ACTION_PHRASES

        if not self.knows(moment, shown_video):
            return None
        query = self._event(moment)
        background = self.backgrounds[shown_video]
        wanted = str(moment.extra["background"])
        matched = shown_video == moment.video_id
        event = self.closest(moment, shown_video)
        if matched:
            event = next(e for e in self.events[shown_video] if abs(e.start - moment.start) < 1e-6)
        head = ""
        if self.style == "full":
            listing = "; ".join(
                f"{_seconds(e.start)}-{_seconds(e.end)}s {e.words()}" for e in self.events[shown_video]
            )
            head = f"Video: {background} background; {listing}. "
        text = (
            f"{head}Query: {query.words()} on {wanted}. Closest: {_seconds(event.start)}-"
            f"{_seconds(event.end)}s {event.words()} on {background}."
        )
        if matched:
            return text + " Match."
        differs = [
            ACTION_PHRASES[event.action][0] if a == "action" else getattr(event, a)
            for a in ATTRIBUTES
            if getattr(event, a) != getattr(query, a)
        ]
        if background != wanted:
            differs.append(background)
        return text + " Differs: " + ", ".join(differs) + "."

    def frame_words(self, video_id: str, timestamps: Sequence[float]) -> list[list[str]] | None:
        """Per frame: size, colour, object, action and background of the event on screen ("nothing" for
        the first four between events); the words connector alignment fits each frame's tokens to."""
        from vsr_model.data.synth_world import ACTION_PHRASES

        if video_id not in self.events:
            return None
        background = self.backgrounds[video_id]
        rows = []
        for t in timestamps:
            on = [e for e in self.events[video_id] if e.start <= t < e.end]
            if on:
                e = on[0]
                rows.append([e.size, e.color, e.object, ACTION_PHRASES[e.action][0], background])
            else:
                rows.append(["nothing"] * 4 + [background])
        return rows

    def rewrite(self, moment: Moment, shown_video: str) -> str | None:
        """A query in the engine's training wording (the first template, canonical words), naming every
        attribute: what a good rewrite of a held-out paraphrase is."""
        from vsr_model.data.synth_world import ACTION_PHRASES, SIZE_WORDS

        extra = moment.extra or {}
        if not all(a in extra for a in (*ATTRIBUTES, "background")):
            return None
        return (
            f"A {SIZE_WORDS[extra['size']][0]} {extra['color']} {extra['object']} "
            f"{ACTION_PHRASES[extra['action']][0]} on a {extra['background']} background"
        )


class RationaleFile:
    """Rationales (and optional rewrites) from a jsonl keyed by (query_id, video_id)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        with self.path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = (str(row["query_id"]), str(row["video_id"]))
                    if not isinstance(row["rationale"], str) or not row["rationale"].strip():
                        raise ValueError("empty rationale")
                    if (
                        "rewrite" in row
                        and row["rewrite"] is not None
                        and not isinstance(row["rewrite"], str)
                    ):
                        raise ValueError("rewrite must be text")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(
                        f"{self.path}:{lineno}: expected {{query_id, video_id, rationale[, rewrite]}}: {exc}"
                    ) from exc
                if key in self.rows:
                    raise ValueError(f"{self.path}:{lineno}: repeated (query_id, video_id) {key}")
                self.rows[key] = row

    def rationale(self, moment: Moment, shown_video: str) -> str | None:
        row = self.rows.get((str(moment.query_id), shown_video))
        return None if row is None else row["rationale"].strip()

    def rewrite(self, moment: Moment, shown_video: str) -> str | None:
        row = self.rows.get((str(moment.query_id), shown_video))
        return None if row is None or not row.get("rewrite") else row["rewrite"].strip()


class TeacherChain:
    """The first teacher that knows a pair answers; the fixed sentence (or the query itself, for a
    rewrite) otherwise, counted in `fallbacks` and logged once."""

    def __init__(self, teachers: Sequence[Teacher]) -> None:
        self.teachers = list(teachers)
        self.fallbacks = {"rationale": 0, "rewrite": 0}

    def _fallback(self, kind: str) -> None:
        if self.fallbacks[kind] == 0:
            logger.warning("no teacher %s for some (query, video) pairs: using the fallback", kind)
        self.fallbacks[kind] += 1

    def _first(self, kind: str, moment: Moment, shown_video: str, fallback: str) -> str:
        for teacher in self.teachers:
            text = getattr(teacher, kind)(moment, shown_video)
            if text:
                return text
        self._fallback(kind)
        return fallback

    def rationale(self, moment: Moment, shown_video: str) -> str:
        return self._first(
            "rationale", moment, shown_video, default_rationale(shown_video == moment.video_id)
        )

    def rewrite(self, moment: Moment, shown_video: str) -> str:
        return self._first("rewrite", moment, shown_video, moment.query.strip())
