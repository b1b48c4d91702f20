"""The one prompt protocol of the agent: the verify prompt, the response format and its tolerant parser.

SFT, GRPO and evaluation all build prompts and read responses through this module, so the text the
policy is trained on is exactly the text it sees at evaluation time.

A response in the Soft Query Refinement protocol looks like::

    <think>...</think> <answer>matched</answer> <start>12.5</start> <end>20.0</end> <REFINE>
    <think>...</think> <answer>not_matched</answer> <REFINE>

In the hard-query-refinement baseline (the policy rewrites the query as text) a rejection reads::

    <think>...</think> <answer>not_matched</answer> <query>a rewritten query</query>
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from enum import Enum

REFINE_TOKEN = "<REFINE>"

MATCHED = "matched"
NOT_MATCHED = "not_matched"


class RefinementMode(str, Enum):
    """How a rejected retrieval is refined: latent soft tokens (SQR) or a rewritten text query (HQR)."""

    SOFT = "soft"
    HARD = "hard"

    @classmethod
    def parse(cls, value: str | RefinementMode) -> RefinementMode:
        if isinstance(value, RefinementMode):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"unknown refinement mode {value!r}; expected one of {[m.value for m in cls]}"
            ) from None


_SYSTEM_SOFT = (
    "You are a video search agent. A search engine retrieved one video for the user's query. "
    "Watch the video and decide whether it contains the moment the query describes. "
    "First reason inside <think></think>. Then answer inside <answer></answer> with exactly "
    "'matched' or 'not_matched'. If matched, give the moment's start and end in seconds as decimals "
    "inside <start></start> and <end></end>. Always finish with <REFINE>."
)

_SYSTEM_HARD = (
    "You are a video search agent. A search engine retrieved one video for the user's query. "
    "Watch the video and decide whether it contains the moment the query describes. "
    "First reason inside <think></think>. Then answer inside <answer></answer> with exactly "
    "'matched' or 'not_matched'. If matched, give the moment's start and end in seconds as decimals "
    "inside <start></start> and <end></end>. If not matched, write a better search query for the "
    "engine inside <query></query>."
)


@dataclass(frozen=True)
class VerifyPrompt:
    """A verify-turn prompt, split around the place where the policy inserts the video.

    The policy family decides how frames are rendered (vision tokens with timestamps for Qwen-VL,
    projected frame features with timestamp text for the composite model); the words are fixed here.
    """

    system: str
    before_video: str
    after_video: str


# A short instruction per protocol for small policies that learn the response format in Stage 1 anyway:
# the full instruction is a third of a small policy's prompt, so a third of its training compute.
_COMPACT_SOFT = "Verify the video for the query, then end with <REFINE>."
_COMPACT_HARD = "Verify the video for the query; if it is wrong, rewrite the query in <query></query>."
PROMPT_STYLES = ("full", "compact")


def build_verify_prompt(
    query: str,
    duration: float,
    mode: RefinementMode | str = RefinementMode.SOFT,
    style: str = "full",
    query_first: bool = True,
) -> VerifyPrompt:
    """The verify prompt for one (query, retrieved video) pair. Each turn is a fresh prompt: no history.

    `style`: the full instruction (default) or a one-sentence one (PROMPT_STYLES). `query_first`: the
    query before the video, as the authors place it (False: after it)."""
    mode = RefinementMode.parse(mode)
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"video duration must be a positive finite number of seconds, got {duration!r}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    soft = mode is RefinementMode.SOFT
    if style == "full":
        system = _SYSTEM_SOFT if soft else _SYSTEM_HARD
        video = f"Video ({duration:.1f} seconds long; each frame is labelled with its time in seconds):\n"
        question = "\nDoes this video contain the moment described by the query?"
    else:
        system = _COMPACT_SOFT if soft else _COMPACT_HARD
        video = f"Video ({duration:.1f} s): "
        question = ""
    if query_first:
        return VerifyPrompt(system, f"Query: {query.strip()}\n{video}", question)
    return VerifyPrompt(system, video, f"\nQuery: {query.strip()}{question}")


def format_seconds(value: float) -> str:
    """Seconds as the decimal text used in responses (one decimal place is below frame resolution)."""
    return f"{value:.1f}"


def format_response(
    think: str,
    matched: bool,
    span: tuple[float, float] | None = None,
    mode: RefinementMode | str = RefinementMode.SOFT,
    rewritten_query: str | None = None,
) -> str:
    """A well-formed target response, used for supervised targets and tests; the parser reads it back."""
    mode = RefinementMode.parse(mode)
    if matched and span is None:
        raise ValueError("a matched response needs a (start, end) span")
    if not matched and span is not None:
        raise ValueError("a not_matched response has no span")
    parts = [f"<think>{think.strip()}</think>", f"<answer>{MATCHED if matched else NOT_MATCHED}</answer>"]
    if span is not None:
        start, end = span
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"invalid span {span!r}: need 0 <= start <= end, finite")
        parts += [f"<start>{format_seconds(start)}</start>", f"<end>{format_seconds(end)}</end>"]
    if mode is RefinementMode.SOFT:
        parts.append(REFINE_TOKEN)
    elif not matched:
        if not rewritten_query or not rewritten_query.strip():
            raise ValueError("a not_matched response in hard-refinement mode needs a rewritten query")
        parts.append(f"<query>{rewritten_query.strip()}</query>")
    return " ".join(parts)


@dataclass(frozen=True)
class ParsedResponse:
    """What could be read from one response; `problems` lists everything that could not.

    `answer` is None when no single valid verdict was found. `span` is set only when both times parse
    as finite, non-negative numbers with start <= end; `span_tags_present` records that the tags were
    written at all (the time-format reward looks at presence, the metrics at validity).
    """

    think: str | None
    answer: str | None
    span: tuple[float, float] | None
    span_tags_present: bool
    refine: bool
    rewritten_query: str | None
    problems: tuple[str, ...] = field(default=())

    @property
    def matched(self) -> bool:
        return self.answer == MATCHED

    @property
    def not_matched(self) -> bool:
        return self.answer == NOT_MATCHED

    @property
    def parsed_answer(self) -> bool:
        return self.answer is not None


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


_TAG = re.compile(r"<\s*(/?)\s*([A-Za-z_]+)\s*>")


@dataclass
class _TagScan:
    """Closed <tag>...</tag> contents per tag (lower-cased) and tags left open, from one linear pass.

    A block runs from the first unclosed opening tag to the next closing tag of the same name (the
    non-greedy reading), so nested or repeated openings never cost more than one scan of the text.
    """

    blocks: dict[str, list[str]]
    unclosed: set[str]

    @classmethod
    def of(cls, text: str) -> _TagScan:
        blocks: dict[str, list[str]] = {}
        open_at: dict[str, int] = {}
        for m in _TAG.finditer(text):
            closing, name = m.group(1) == "/", m.group(2).lower()
            if not closing:
                open_at.setdefault(name, m.end())
            elif name in open_at:
                blocks.setdefault(name, []).append(text[open_at.pop(name) : m.start()])
        return cls(blocks, set(open_at))


def _parse_time(raw: str | None, name: str, problems: list[str]) -> float | None:
    if raw is None:
        return None
    match = _NUMBER.search(raw)
    if match is None:
        problems.append(f"<{name}> holds no number: {raw.strip()[:40]!r}")
        return None
    try:
        value = float(match.group(0))
    except (OverflowError, ValueError):
        problems.append(f"<{name}> number unreadable: {match.group(0)[:40]!r}")
        return None
    if not math.isfinite(value):
        problems.append(f"<{name}> is not finite")
        return None
    if value < 0:
        problems.append(f"<{name}> is negative ({value})")
        return None
    return value


def _single(scan: _TagScan, tag: str, problems: list[str]) -> str | None:
    blocks = scan.blocks.get(tag, [])
    if not blocks:
        if tag in scan.unclosed:
            problems.append(f"<{tag}> is not closed")
        return None
    if len(blocks) > 1:
        problems.append(f"{len(blocks)} <{tag}> blocks; the first is used")
    return blocks[0]


def parse_response(text: object) -> ParsedResponse:
    """Read a policy response. Never raises: anything unreadable is reported in `problems`."""
    problems: list[str] = []
    if not isinstance(text, str):
        problems.append(f"response is not text but {type(text).__name__}")
        text = ""
    if not text.strip():
        problems.append("empty response")

    scan = _TagScan.of(text)
    think_raw = _single(scan, "think", problems)
    think = think_raw.strip() if think_raw is not None else None
    if think_raw is None:
        problems.append("missing <think>")
    elif think == "":
        problems.append("empty <think>")

    answer: str | None = None
    answer_raw = _single(scan, "answer", problems)
    if answer_raw is None:
        problems.append("missing <answer>")
    else:
        verdict = re.sub(r"[\s\-]+", "_", answer_raw.strip().lower())
        if verdict in (MATCHED, NOT_MATCHED):
            answer = verdict
        else:
            problems.append(f"<answer> is neither matched nor not_matched: {answer_raw.strip()[:40]!r}")

    start_raw = _single(scan, "start", problems)
    end_raw = _single(scan, "end", problems)
    span_tags_present = start_raw is not None and end_raw is not None
    if (start_raw is None) != (end_raw is None):
        problems.append("only one of <start>/<end> present")
    start = _parse_time(start_raw, "start", problems)
    end = _parse_time(end_raw, "end", problems)
    span: tuple[float, float] | None = None
    if start is not None and end is not None:
        if start <= end:
            span = (start, end)
        else:
            problems.append(f"start {start} is after end {end}")
    if answer == MATCHED and span is None:
        problems.append("matched without a valid span")
    if answer == NOT_MATCHED and span_tags_present:
        problems.append("not_matched with a span")

    lowered = text.lower()
    refine = REFINE_TOKEN.lower() in lowered
    if refine and not lowered.rstrip().endswith(REFINE_TOKEN.lower()):
        problems.append("text after <REFINE>")
    query_raw = _single(scan, "query", problems)
    rewritten = query_raw.strip() if query_raw is not None and query_raw.strip() else None
    if query_raw is not None and rewritten is None:
        problems.append("empty <query>")

    return ParsedResponse(
        think=think,
        answer=answer,
        span=span,
        span_tags_present=span_tags_present,
        refine=refine,
        rewritten_query=rewritten,
        problems=tuple(problems),
    )


@dataclass
class TurnTrace:
    """One verify turn of one query: what was retrieved, what was shown, what the policy said."""

    turn: int
    ranking: list[str]
    scores: list[float]
    response: str
    parsed: ParsedResponse
    label_matched: bool | None = None
    rewritten_query: str | None = None
    refinement_tokens: int = 0
    # Tokens the policy generated for `response` (None in traces written before it was recorded).
    response_tokens: int | None = None
    # The agent's decision: True when this turn ended the search as the answer. The policy's own
    # verdict (`parsed`) decides unless the verifier is the oracle. None in traces written before it
    # was recorded: the policy's verdict then.
    decided_matched: bool | None = None
    # 1-based rank of the ground-truth video in the whole index for the search that produced `ranking`
    # (the videos shown before excluded; None when it was one of them or is unknown).
    gt_rank: int | None = None
    # Kept in memory for training, never written: the generated token ids and, after a refinement, the
    # embedding the next search used.
    completion_ids: list[int] | None = field(default=None, repr=False, compare=False)
    refined_query: object | None = field(default=None, repr=False, compare=False)

    @property
    def ended_search(self) -> bool:
        """Whether this turn's video was accepted as the answer."""
        return self.parsed.matched if self.decided_matched is None else bool(self.decided_matched)

    @property
    def shown_video(self) -> str:
        return self.ranking[0]

    def to_dict(self) -> dict:
        parsed = self.parsed
        return {
            "turn": self.turn,
            "shown_video": self.shown_video,
            "ranking": list(self.ranking),
            "scores": [float(s) for s in self.scores],
            "response": self.response,
            "answer": parsed.answer,
            "span": list(parsed.span) if parsed.span is not None else None,
            "think": parsed.think,
            "refine": parsed.refine,
            "span_tags_present": parsed.span_tags_present,
            "problems": list(parsed.problems),
            "label_matched": self.label_matched,
            "rewritten_query": self.rewritten_query,
            "refinement_tokens": self.refinement_tokens,
            "response_tokens": self.response_tokens,
            "decided_matched": self.decided_matched,
            "gt_rank": self.gt_rank,
        }

    @classmethod
    def from_dict(cls, row: dict) -> TurnTrace:
        parsed = ParsedResponse(
            think=row.get("think"),
            answer=row.get("answer"),
            span=tuple(row["span"]) if row.get("span") is not None else None,
            span_tags_present=bool(row.get("span_tags_present", False)),
            refine=bool(row.get("refine", False)),
            rewritten_query=row.get("rewritten_query"),
            problems=tuple(row.get("problems", ())),
        )
        return cls(
            turn=int(row["turn"]),
            ranking=list(row["ranking"]),
            scores=[float(s) for s in row["scores"]],
            response=row["response"],
            parsed=parsed,
            label_matched=row.get("label_matched"),
            rewritten_query=row.get("rewritten_query"),
            refinement_tokens=int(row.get("refinement_tokens", 0)),
            response_tokens=None if row.get("response_tokens") is None else int(row["response_tokens"]),
            decided_matched=None if row.get("decided_matched") is None else bool(row["decided_matched"]),
            gt_rank=None if row.get("gt_rank") is None else int(row["gt_rank"]),
        )


@dataclass
class QueryTrace:
    """The full multi-turn record of one query; evaluation writes one per line (jsonl).

    `final_ranking` is the last retrieval performed: after a rejection on the last turn the agent
    still refines and searches once more, and that post-refinement ranking is what the authors report
    as VR. The answer is the (video, span) of the turn that ended the search (TurnTrace.ended_search);
    None when every turn rejected. Its span is the policy's, None when the policy gave none.
    """

    query_id: str
    query: str
    gt_video: str | None
    gt_span: tuple[float, float] | None
    turns: list[TurnTrace] = field(default_factory=list)
    final_ranking: list[str] = field(default_factory=list)
    # The ground-truth video's rank (TurnTrace.gt_rank) in the search that produced `final_ranking`.
    final_gt_rank: int | None = None

    @property
    def answer_turn(self) -> TurnTrace | None:
        for turn in self.turns:
            if turn.ended_search:
                return turn
        return None

    @property
    def answer_video(self) -> str | None:
        turn = self.answer_turn
        return turn.shown_video if turn is not None else None

    @property
    def answer_span(self) -> tuple[float, float] | None:
        turn = self.answer_turn
        return turn.parsed.span if turn is not None else None

    def cut(self, max_turns: int, final_refine: bool = True) -> QueryTrace:
        """This trace as the agent would have left it with `max_turns` verify turns.

        Greedy decoding makes a query's first t turns the same whatever the turn limit, so a run with
        more turns holds the shorter runs: the post-refinement ranking after turn t is the ranking
        turn t+1 was shown. `final_refine=False` is the single-shot agent, which never refines: its
        final ranking is the one it verified and it spends no refinement tokens.
        """
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        kept = [replace(t) for t in self.turns[:max_turns]]
        cut = QueryTrace(self.query_id, self.query, self.gt_video, self.gt_span, kept)
        if len(kept) == len(self.turns):
            cut.final_ranking = list(self.final_ranking)
            cut.final_gt_rank = self.final_gt_rank
        else:
            # An accepted video ends the query, so the last kept turn rejected: the search that followed
            # it is what turn max_turns + 1 was shown.
            cut.final_ranking = list(self.turns[max_turns].ranking)
            cut.final_gt_rank = self.turns[max_turns].gt_rank
        if not final_refine and kept:
            last = kept[-1]
            if not last.ended_search:
                last.refinement_tokens = 0
                last.rewritten_query = None
                cut.final_ranking = list(last.ranking)
                cut.final_gt_rank = last.gt_rank
        return cut

    def to_dict(self) -> dict:
        return {
            "query_id": self.query_id,
            "query": self.query,
            "gt_video": self.gt_video,
            "gt_span": list(self.gt_span) if self.gt_span is not None else None,
            "answer_video": self.answer_video,
            "answer_span": list(self.answer_span) if self.answer_span is not None else None,
            "turns": [t.to_dict() for t in self.turns],
            "final_ranking": list(self.final_ranking),
            "final_gt_rank": self.final_gt_rank,
        }

    @classmethod
    def from_dict(cls, row: dict) -> QueryTrace:
        return cls(
            query_id=str(row["query_id"]),
            query=row["query"],
            gt_video=row.get("gt_video"),
            gt_span=tuple(row["gt_span"]) if row.get("gt_span") is not None else None,
            turns=[TurnTrace.from_dict(t) for t in row["turns"]],
            final_ranking=list(row.get("final_ranking", [])),
            final_gt_rank=None if row.get("final_gt_rank") is None else int(row["final_gt_rank"]),
        )
