"""report.html: one static page that shows what the agent did, query by query.

The page opens with the results table (with confidence intervals when given) and the plots, then
shows one card per query for a sample of queries: per verify turn a strip of thumbnails of the video
the agent was shown (labelled with the frames' true timestamps), its rationale, whether its verdict was
right, the rank of the ground-truth video before and after the refinement that followed, and for a
`matched` verdict a timeline with the predicted and the ground-truth spans. When the ground-truth video
was never shown, its strip closes the card. Buttons filter the cards by outcome and a menu by variant
(plain JavaScript, nothing fetched from a network).

Everything here reads only `QueryTrace` / `TurnTrace` fields and a corpus whose
`clip(video_id, sampling)` returns frames with their true timestamps (vsr_model.corpus.Corpus).
Thumbnails are one JPEG strip per video (vsr_train.report_strips) in `report_files/` beside the page;
the page plus that folder stay under `ReportSettings.max_bytes` (cards beyond the cap are left out,
and the page says how many). `vsr report` (vsr_train.cli_report) rebuilds the page with other settings.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr_model.fileio import atomic_directory, atomic_write_text
from vsr_model.metrics import answer_iou, temporal_iou
from vsr_model.protocol import QueryTrace, TurnTrace
from vsr_train.report_strips import ClipSource, Strip, StripBook

if TYPE_CHECKING:
    from vsr_model.corpus import Corpus

log = logging.getLogger(__name__)

PAGE_NAME = "report.html"
ASSETS_DIR = "report_files"
_TEMPLATE = Path(__file__).with_name("report_page.html")

# Outcome tags of a query (the page's filter buttons), in display order: tag -> button label.
OUTCOMES: dict[str, str] = {
    "verdict_right": "every verdict right",
    "verdict_wrong": "a verdict wrong",
    "recovered": "recovered by refinement",
    "grounded": "grounded (IoU ≥ 0.5)",
    "false_accept": "accepted a wrong video",
    "false_reject": "rejected the right video",
    "never_shown": "right video never shown",
    "loose_span": "right video, IoU < 0.5",
    "unreadable": "unreadable verdict",
}
_GOOD = {"verdict_right", "recovered", "grounded"}
# The sample takes queries round-robin from these groups (a query joins the first group it has a tag
# of), so successes and each kind of failure all show up in a small sample.
_SAMPLE_GROUPS = ("grounded", "false_accept", "false_reject", "never_shown", "loose_span", "unreadable")


@dataclass(frozen=True)
class ReportSettings:
    """`max_cards`: query cards per variant (a sample spread over outcomes); `all_of`: an outcome tag
    (see OUTCOMES) whose every query gets a card in addition; `thumbnails_per_strip` frames per video,
    `thumbnail_height` pixels high; `max_bytes`: cap on the page plus its thumbnails (cards past it
    are left out); `columns`: (summary key, label) pairs of the results table (None: the paper's)."""

    max_cards: int = 30
    all_of: str | None = None
    thumbnails_per_strip: int = 8
    thumbnail_height: int = 56
    max_bytes: int = 8_000_000
    jpeg_quality: int = 70
    columns: tuple[tuple[str, str], ...] | None = None
    title: str = "VideoSearch-R1: what the agent did"

    def __post_init__(self) -> None:
        if self.max_cards < 0:
            raise ValueError(f"max_cards must be >= 0, got {self.max_cards}")
        if self.all_of is not None and self.all_of not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.all_of!r}; expected one of {sorted(OUTCOMES)}")
        if self.thumbnails_per_strip < 1 or self.thumbnail_height < 8:
            raise ValueError("need thumbnails_per_strip >= 1 and thumbnail_height >= 8")
        if self.max_bytes < 10_000:
            raise ValueError(f"max_bytes must be >= 10000, got {self.max_bytes}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")


Interval = tuple[float, float]


@dataclass
class ReportVariant:
    """One evaluated agent variant: its summary metrics, its traces, optional 95% intervals of the
    metrics (`intervals`: metric -> (low, high)) and of their differences from other variants
    (`paired_intervals`: baseline key -> metric -> (low, high))."""

    key: str
    title: str
    metrics: dict[str, float]
    traces: list[QueryTrace]
    intervals: dict[str, Interval] = field(default_factory=dict)
    paired_intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.key):
            raise ValueError(f"variant key {self.key!r}: use letters, digits, '_', '.', '-'")


# --- what happened in a query ----------------------------------------------------------------------


def gt_rank(ranking: Sequence[str], gt_video: str | None, excluded: Sequence[str] = ()) -> str:
    """Rank of the ground-truth video as shown on a card: "1".."k", "excluded (shown before)" when
    the engine was told to skip it, "> k" when it is not in the top k, "?" without ground truth."""
    if gt_video is None:
        return "?"
    if gt_video in ranking:
        return str(list(ranking).index(gt_video) + 1)
    if gt_video in excluded:
        return "excluded (shown before)"
    return f"> {len(ranking)}"


def turn_verdict(turn: TurnTrace, gt_video: str | None) -> str:
    """right / wrong (against the ground truth), unreadable (no verdict parsed), unknown (no truth)."""
    if turn.parsed.answer is None:
        return "unreadable"
    label = turn.label_matched
    if label is None:
        if gt_video is None:
            return "unknown"
        label = turn.shown_video == gt_video
    return "right" if turn.parsed.matched == label else "wrong"


def query_outcomes(trace: QueryTrace) -> list[str]:
    """The OUTCOMES tags of one query (empty without ground truth)."""
    gt = trace.gt_video
    if gt is None or not trace.turns:
        return []
    verdicts = [turn_verdict(t, gt) for t in trace.turns]
    shown = [t.shown_video for t in trace.turns]
    tags = {"verdict_right" if all(v == "right" for v in verdicts) else "verdict_wrong"}
    if shown[0] != gt and gt in shown[1:]:
        tags.add("recovered")
    iou = answer_iou(trace) if trace.gt_span is not None else 0.0
    if iou >= 0.5:
        tags.add("grounded")
    answer = trace.answer_video
    if answer is not None and answer != gt:
        tags.add("false_accept")
    if any(t.shown_video == gt and t.parsed.not_matched for t in trace.turns):
        tags.add("false_reject")
    if gt not in shown:
        tags.add("never_shown")
    if answer == gt and iou < 0.5:
        tags.add("loose_span")
    if "unreadable" in verdicts:
        tags.add("unreadable")
    return [tag for tag in OUTCOMES if tag in tags]


def select_queries(traces: Sequence[QueryTrace], settings: ReportSettings) -> list[int]:
    """Indices of the queries that get a card, most important first: every query tagged
    `settings.all_of`, then up to `max_cards` in all taken round-robin over the outcome groups."""
    tags = [set(query_outcomes(t)) for t in traces]
    chosen = [i for i, t in enumerate(tags) if settings.all_of in t] if settings.all_of else []
    taken = set(chosen)
    groups: dict[str, deque[int]] = {}
    for i, t in enumerate(tags):
        if i not in taken:
            groups.setdefault(next((g for g in _SAMPLE_GROUPS if g in t), "other"), deque()).append(i)
    queues = [groups[g] for g in (*_SAMPLE_GROUPS, "other") if g in groups]
    while len(chosen) < settings.max_cards and any(queues):
        for queue in queues:
            if queue and len(chosen) < settings.max_cards:
                chosen.append(queue.popleft())
    return chosen


# --- HTML ------------------------------------------------------------------------------------------

_e = html.escape


def _seconds(value: float) -> str:
    return f"{value:.1f}"


def _span_text(span: Sequence[float] | None) -> str:
    return "none" if span is None else f"{_seconds(span[0])}–{_seconds(span[1])} s"


def _strip_html(strip: Strip, assets: str, gt_span: Interval | None) -> str:
    stamps = "".join(
        f'<span style="width:{strip.thumb_width}px"'
        + (' class="in-gt"' if gt_span is not None and gt_span[0] <= t <= gt_span[1] else "")
        + f">{_seconds(t)}s</span>"
        for t in strip.timestamps
    )
    alt = f"frames at {', '.join(_seconds(t) for t in strip.timestamps)} s"
    return (
        f'<div class="strip"><img src="{_e(assets)}/{_e(strip.file)}" alt="{_e(alt)}">'
        f'<div class="stamps">{stamps}</div></div>'
    )


def _timeline(strip: Strip, predicted: Interval | None, gt_span: Interval | None) -> str:
    """Spans on a bar as wide as the strip above it (thumbnail i sits at the centre of time bin i)."""
    duration = strip.duration

    def bar(span: Interval, css: str) -> str:
        left = min(max(span[0] / duration, 0.0), 1.0)
        width = max(min(max(span[1] / duration, 0.0), 1.0) - left, 0.004)
        return f'<div class="span {css}" style="left:{100 * left:.2f}%;width:{100 * width:.2f}%"></div>'

    bars = (bar(gt_span, "gt") if gt_span else "") + (bar(predicted, "pred") if predicted else "")
    legend = [f"video 0–{_seconds(duration)} s"]
    if gt_span is not None:
        legend.append(f'<span class="gt-key">ground truth</span> {_span_text(gt_span)}')
    if predicted is not None:
        legend.append(f'<span class="pred-key">predicted</span> {_span_text(predicted)}')
    if gt_span is not None and predicted is not None:
        legend.append(f"IoU {temporal_iou(predicted, gt_span):.2f}")
    width = strip.thumb_width * len(strip.timestamps)
    return (
        f'<div class="timeline" style="width:{width}px">{bars}</div>'
        f'<div class="timeline-legend">{" · ".join(legend)}</div>'
    )


def _ranked(rank: str) -> str:
    return "excluded (shown before)" if rank.startswith("excluded") else f"ranked {_e(rank)}"


def _refinement(turn: TurnTrace) -> str:
    if turn.rewritten_query:
        return f"rewritten query: “{_e(turn.rewritten_query)}”"
    if turn.refinement_tokens:
        return f"soft refinement ({turn.refinement_tokens} latent tokens)"
    return "searched again with the query unchanged"


def _turn_html(trace: QueryTrace, index: int, strips: StripBook, assets: str) -> str:
    turn, gt = trace.turns[index], trace.gt_video
    before_shown = [t.shown_video for t in trace.turns[:index]]
    verdict = turn_verdict(turn, gt)
    css = (
        "verdict-right"
        if verdict == "right"
        else "verdict-unknown"
        if verdict == "unknown"
        else "verdict-wrong"
    )
    verdict = "wrong: no verdict parsed" if verdict == "unreadable" else verdict
    head = [
        f"<b>Turn {turn.turn}</b>",
        f"shown <code>{_e(turn.shown_video)}</code>",
        f"ground truth {_ranked(gt_rank(turn.ranking, gt, before_shown))}",
        f'answer <b>{_e(turn.parsed.answer or "none")}</b> <span class="{css}">({verdict})</span>',
    ]
    last = index == len(trace.turns) - 1
    after = trace.turns[index + 1].ranking if not last else trace.final_ranking
    refined = not turn.parsed.matched and not (last and list(after) == list(turn.ranking))
    tail = ""
    if refined:
        rank = gt_rank(after, gt, [*before_shown, turn.shown_video])
        tail = f'<div class="meta">then {_refinement(turn)}; ground truth {_ranked(rank)} after it</div>'
    on_gt = turn.shown_video == gt
    strip = strips.get(turn.shown_video)
    parts = [
        f'<div class="turn-head">{" · ".join(head)}</div>',
        _strip_html(strip, assets, trace.gt_span if on_gt else None),
    ]
    if turn.parsed.think:
        parts.append(f'<p class="think">{_e(turn.parsed.think[:1200])}</p>')
    if turn.parsed.matched:
        parts.append(_timeline(strip, turn.parsed.span, trace.gt_span if on_gt else None))
        if not on_gt:
            parts.append('<div class="meta">a wrong video: no ground-truth span on it</div>')
    problems = "; ".join(turn.parsed.problems)
    parts.append(
        "<details><summary>raw response"
        + (f" (problems: {_e(problems)})" if problems else "")
        + f"</summary><pre>{_e(turn.response[:3000])}</pre></details>"
    )
    return '<section class="turn">' + "".join(parts) + tail + "</section>"


def _card_html(variant: ReportVariant, trace: QueryTrace, strips: StripBook, assets: str) -> str:
    tags = query_outcomes(trace)
    badges = "".join(
        f'<span class="tag {"good" if t in _GOOD else "bad"}">{_e(OUTCOMES[t])}</span>' for t in tags
    )
    gt = trace.gt_video
    iou = answer_iou(trace) if gt is not None and trace.gt_span is not None else 0.0
    answer = (
        f"answer <code>{_e(trace.answer_video)}</code> {_span_text(trace.answer_span)}, IoU {iou:.2f}"
        if trace.answer_video is not None
        else "no answer (every turn rejected)"
    )
    parts = [
        f'<div class="meta">{_e(variant.title)} · query <code>{_e(trace.query_id)}</code> · {answer}</div>',
        f"<h3>{_e(trace.query)}</h3>",
        f"<div>{badges}</div>",
        f'<div class="meta">ground truth: <code>{_e(gt or "unknown")}</code> {_span_text(trace.gt_span)}</div>',
    ]
    parts += [_turn_html(trace, i, strips, assets) for i in range(len(trace.turns))]
    if gt is not None and gt not in {t.shown_video for t in trace.turns}:
        strip = strips.get(gt)
        rank = gt_rank(trace.final_ranking, gt, [t.shown_video for t in trace.turns])
        parts.append(
            '<section class="gt-video"><div class="turn-head"><b>The ground-truth video</b> '
            f"<code>{_e(gt)}</code>, never shown (final ranking: {_e(rank)})</div>"
            + _strip_html(strip, assets, trace.gt_span)
            + (_timeline(strip, None, trace.gt_span) if trace.gt_span else "")
            + "</section>"
        )
    return (
        f'<article class="card" id="{_e(variant.key)}-{_e(_anchor(trace.query_id))}" '
        f'data-variant="{_e(variant.key)}" data-tags="{_e(" ".join(tags))}">' + "".join(parts) + "</article>"
    )


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _cell(value: Any, interval: Sequence[float] | None, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    number = isinstance(value, int | float) and math.isfinite(value)
    text = fmt.format(float(value)) if number else "n/a"
    if interval is not None:
        text += f'<span class="ci">[{fmt.format(interval[0])}, {fmt.format(interval[1])}]</span>'
    return f"<td>{text}</td>"


def _results_html(variants: Sequence[ReportVariant], columns: Sequence[tuple[str, str]]) -> str:
    head = "<tr><th>Variant</th>" + "".join(f"<th>{_e(label)}</th>" for _, label in columns) + "</tr>"
    rows = [
        f"<tr><td>{_e(v.title)}</td>"
        + "".join(_cell(v.metrics.get(k), v.intervals.get(k)) for k, _ in columns)
        + "</tr>"
        for v in variants
    ]
    out = "<h2>Results</h2><table>" + head + "".join(rows) + "</table>"
    if any(v.intervals for v in variants):
        out += '<p class="note">Below each value: its 95% confidence interval.</p>'
    by_key = {v.key: v for v in variants}
    rows = []
    for v in variants:
        for base_key, intervals in v.paired_intervals.items():
            base = by_key.get(base_key)
            diffs = [
                v.metrics[k] - base.metrics[k] if base and k in base.metrics and k in v.metrics else None
                for k, _ in columns
            ]
            cells = "".join(
                _cell(d, intervals.get(k), True) for d, (k, _) in zip(diffs, columns, strict=True)
            )
            title = base.title if base else base_key
            rows.append(f"<tr><td>{_e(v.title)} − {_e(title)}</td>{cells}</tr>")
    if rows:
        out += "<h3>Differences, with 95% paired intervals</h3><table>" + head + "".join(rows) + "</table>"
    return out


def _outcome_table(variants: Sequence[ReportVariant]) -> str:
    head = "<tr><th>Variant</th><th>queries</th>" + "".join(f"<th>{_e(v)}</th>" for v in OUTCOMES.values())
    rows = []
    for v in variants:
        counts = dict.fromkeys(OUTCOMES, 0)
        for trace in v.traces:
            for tag in query_outcomes(trace):
                counts[tag] += 1
        cells = "".join(f"<td>{counts[t]}</td>" for t in OUTCOMES)
        rows.append(f"<tr><td>{_e(v.title)}</td><td>{len(v.traces)}</td>{cells}</tr>")
    return "<h2>Outcomes over all queries</h2><table>" + head + "</tr>" + "".join(rows) + "</table>"


def _filters_html(variants: Sequence[ReportVariant]) -> str:
    options = '<option value="all">all variants</option>' + "".join(
        f'<option value="{_e(v.key)}">{_e(v.title)}</option>' for v in variants
    )
    buttons = '<button type="button" data-outcome="all">all</button>' + "".join(
        f'<button type="button" data-outcome="{t}">{_e(label)}</button>' for t, label in OUTCOMES.items()
    )
    return (
        f'<div class="filters"><label>Variant <select id="variant-filter">{options}</select></label> '
        f'{buttons} <span id="shown-count" class="note"></span></div>'
    )


def _check_videos(variants: Sequence[ReportVariant], corpus: ClipSource) -> None:
    """Every shown and every ground-truth video must be in the corpus: fail before writing anything."""
    if not hasattr(corpus, "__contains__"):
        return
    for variant in variants:
        for trace in variant.traces:
            for video in [*(t.shown_video for t in trace.turns), trace.gt_video]:
                if video is not None and video not in corpus:  # type: ignore[operator]
                    raise ValueError(
                        f"variant {variant.key!r}, query {trace.query_id!r}: video {video!r} is not in "
                        "the report's corpus"
                    )


def _plots_html(plots: Sequence[Path], out_dir: Path, staging: Path) -> str:
    """Plots inside out_dir are linked where they are; others are copied into the assets folder."""
    images = []
    for i, plot in enumerate(map(Path, plots)):
        if not plot.is_file():
            raise FileNotFoundError(f"plot not found: {plot}")
        try:
            src = plot.resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            src = f"{ASSETS_DIR}/plot-{i}-{plot.name}"
            shutil.copyfile(plot, staging / Path(src).name)
        images.append(f'<img src="{_e(src)}" alt="{_e(plot.stem)}">')
    return f'<div class="plots">{"".join(images)}</div>' if images else ""


def _cards_within(
    variants: Sequence[ReportVariant], strips: StripBook, budget: int, settings
) -> tuple[list[str], int]:
    """The cards that fit in `budget` bytes (with their new thumbnails), taken in order of importance
    (every variant's first card, then every second one, ...), listed variant by variant in query
    order; and how many were left out."""
    picks = [select_queries(v.traces, settings) for v in variants]
    kept: dict[tuple[int, int], str] = {}
    for rank, vi in sorted((rank, vi) for vi, pick in enumerate(picks) for rank in range(len(pick))):
        card = _card_html(variants[vi], variants[vi].traces[picks[vi][rank]], strips, ASSETS_DIR)
        cost = len(card.encode()) + strips.pending_bytes()
        if cost > budget:
            strips.drop()
            break
        strips.write()
        budget -= cost
        kept[(vi, picks[vi][rank])] = card
    return [kept[key] for key in sorted(kept)], sum(map(len, picks)) - len(kept)


def write_html_report(
    out_dir: Path,
    variants: Sequence[ReportVariant],
    plots: Sequence[Path],
    corpus: ClipSource,
    settings: ReportSettings | None = None,
) -> Path:
    """Write out_dir/report.html and its thumbnails (out_dir/report_files/); return the page's path.

    Plots inside out_dir are linked where they are, others are copied beside the thumbnails. Cards are
    added in order of importance until the page and its files would pass `settings.max_bytes`."""
    settings = settings or ReportSettings()
    out_dir = Path(out_dir)
    if not variants:
        raise ValueError("a report needs at least one variant")
    keys = [v.key for v in variants]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate variant keys: {keys}")
    _check_videos(variants, corpus)
    columns = settings.columns
    if columns is None:
        from vsr_train.evaluate import PAPER_COLUMNS

        columns = PAPER_COLUMNS
    template = _TEMPLATE.read_text(encoding="utf-8")
    with atomic_directory(out_dir / ASSETS_DIR) as staging:
        staging.chmod(0o755)  # a temporary folder starts private; the page's readers need it
        head = (
            f"<h1>{_e(settings.title)}</h1>"
            + _results_html(variants, columns)
            + _plots_html(plots, out_dir, staging)
            + _outcome_table(variants)
        )
        filters = _filters_html(variants)
        fixed = len((template + head + filters).encode()) + 1024  # 1 KB: the note above the cards
        fixed += sum(f.stat().st_size for f in staging.iterdir())
        strips = StripBook(
            corpus, staging, settings.thumbnails_per_strip, settings.thumbnail_height, settings.jpeg_quality
        )
        cards, left_out = _cards_within(variants, strips, settings.max_bytes - fixed, settings)
        if left_out:
            log.warning("report: %d cards left out to stay under %d bytes", left_out, settings.max_bytes)
        note = (
            f'<p class="note">{len(cards)} cards for {sum(len(v.traces) for v in variants)} queries over '
            f"{len(variants)} variants (a sample of up to {settings.max_cards} per variant spread over the outcomes"
            + (f", plus every query tagged “{_e(OUTCOMES[settings.all_of])}”" if settings.all_of else "")
            + (f"; {left_out} left out for the size cap" if left_out else "")
            + "). Thumbnails are labelled with their true timestamps; green ones lie in the ground-truth span."
            + " Regenerate with other settings: <code>vsr report --help</code>.</p>"
        )
        body = head + "<h2>Queries</h2>" + note + filters + "".join(cards)
        page = template.replace("{{TITLE}}", _e(settings.title)).replace("{{BODY}}", body)
    path = atomic_write_text(out_dir / PAGE_NAME, page)
    log.info("report: %s (%d cards, %d thumbnail strips)", path, len(cards), len(strips.written))
    return path


# --- evaluation folders ----------------------------------------------------------------------------


def _intervals(mapping: Any, where: str) -> dict[str, Interval]:
    """metric -> (low, high) from a {metric: [low, high]} mapping; anything else is left out, loudly."""
    out: dict[str, Interval] = {}
    for metric, pair in (mapping if isinstance(mapping, dict) else {}).items():
        if (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(v, int | float) for v in pair)
        ):
            out[str(metric)] = (float(pair[0]), float(pair[1]))
        else:
            log.warning("report: %s: interval of %r is not [low, high] (%r); not shown", where, metric, pair)
    if mapping and not isinstance(mapping, dict):
        log.warning("report: %s: intervals are not a {metric: [low, high]} mapping; not shown", where)
    return out


def load_eval_variant(eval_dir: Path, key: str | None = None, summary: dict | None = None) -> ReportVariant:
    """A ReportVariant from a `vsr eval` folder (summary.json + traces.jsonl). `key` defaults to the
    folder's name. Intervals come from `summary` (a demo's summary.json: `ci.<key>.<metric>` and
    `paired_ci.<key>__vs__<baseline>.<metric>`, each [low, high]) or from the run's own `ci`."""
    eval_dir = Path(eval_dir)
    summary_file, traces_file = eval_dir / "summary.json", eval_dir / "traces.jsonl"
    for f in (summary_file, traces_file):
        if not f.is_file():
            raise FileNotFoundError(f"{eval_dir} is not a finished evaluation: {f.name} is missing")
    run = json.loads(summary_file.read_text())
    key = key or re.sub(r"[^A-Za-z0-9_.-]", "_", eval_dir.name)
    lines = traces_file.read_text().splitlines()
    traces = [QueryTrace.from_dict(json.loads(line)) for line in lines if line.strip()]
    summary = summary or {}
    ci = summary.get("ci")
    intervals = _intervals(ci.get(key) if isinstance(ci, dict) else run.get("ci"), str(summary_file))
    paired = {}
    paired_ci = summary.get("paired_ci")
    for name, values in (paired_ci if isinstance(paired_ci, dict) else {}).items():
        variant, _, base = name.partition("__vs__")
        if variant == key and base:
            paired[base] = _intervals(values, f"paired_ci.{name}")
    return ReportVariant(key, run.get("name", key), dict(run["summary"]), traces, intervals, paired)


def corpus_of(eval_dir: Path) -> Corpus:
    """The corpus a `vsr eval` run searched (its config's `corpus` and `corpus_split`)."""
    from vsr_model.corpus import Corpus

    config = json.loads((Path(eval_dir) / "summary.json").read_text()).get("config", {})
    if not config.get("corpus"):
        raise ValueError(f"{eval_dir}/summary.json names no corpus; cannot draw thumbnails")
    return Corpus.from_jsonl(config["corpus"], split=config.get("corpus_split"))


def report_eval_runs(
    out_dir: Path,
    eval_dirs: Sequence[Path],
    plots: Sequence[Path] = (),
    settings: ReportSettings | None = None,
    summary: dict | None = None,
) -> Path:
    """write_html_report for `vsr eval` folders (one variant each, keyed by folder name), drawing
    thumbnails from the corpus the first one searched; `summary`: see load_eval_variant."""
    if not eval_dirs:
        raise ValueError("no evaluation folders to report on")
    variants = [load_eval_variant(d, summary=summary) for d in eval_dirs]
    return write_html_report(Path(out_dir), variants, plots, corpus_of(eval_dirs[0]), settings)
