"""`vsr eval`: agent variants (vsr_model.agent: verifier x refiner x turns) over a query split, sharded
over ranks, scored with vsr_model.metrics, with 95% paired bootstrap intervals between variants.

Every variant runs the one agent loop with the same policy; greedy responses are shared between the
variants through a GenerationMemo, so a turn several variants take (turn 1 always) is generated once.
Output folder:

    <key>/traces.jsonl, summary.json, results.md, per_turn.png   one folder per variant
    summary.json   results.<key>.<metric>, ci.<key>.<metric> = [low, high] (the mean's interval),
                   paired_ci.<key>__vs__<baseline>.<metric> = [low, high] (of the difference), and
                   grounding_only / majority_rate / variants / config
    results.md     every variant in the paper's table layout
    plots/         variants.png (with error bars), per-turn plots
    report.html    vsr_train.report_html
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vsr_train.checkpoint import write_json_atomic
from vsr_train.config import DeepSpeedSettings, EvalConfig, EvalVariant, config_to_dict, variant_key
from vsr_train.runtime import barrier, init_distributed, seed_everything

log = logging.getLogger(__name__)

# The paper's table: VCMR R@1 at three IoUs, then VER and VR R@1 (plus what our runs add).
PAPER_COLUMNS = (
    ("vcmr_r1_iou0.3", "VCMR R@1 IoU=0.3"),
    ("vcmr_r1_iou0.5", "IoU=0.5"),
    ("vcmr_r1_iou0.7", "IoU=0.7"),
    ("miou", "mIoU"),
    ("ver_strict", "VER"),
    ("ver_turn1", "VER turn 1"),
    ("vr_post_refinement_r1", "VR R@1"),
    ("vr_verified_r1", "VR R@1 (verified)"),
    ("gt_rank_mean", "GT rank"),
    ("text_tokens_per_query", "Text tokens / query"),
    ("latent_tokens_per_query", "Latent tokens / query"),
)
# Metrics that get bootstrap intervals (per-query metrics of vsr_model.metrics.QUERY_METRICS).
CI_METRICS = (
    "vcmr_r1_iou0.3",
    "vcmr_r1_iou0.5",
    "vcmr_r1_iou0.7",
    "miou",
    "vr_verified_r1",
    "vr_post_refinement_r1",
    "gt_rank_mean",
    "ver_turn1",
    "generated_tokens_per_query",
)
SINGLE_SHOT = "single_shot"
GROUNDING_ONLY = "grounding_only"


@dataclass(frozen=True)
class VariantRun:
    """A variant the evaluation runs: its results key, table title and agent."""

    key: str
    title: str
    agent: Any  # vsr_model.agent.AgentConfig


def policy_directory(path: str) -> Path:
    """A saved policy folder, or a training checkpoint whose hf/ holds it."""
    folder = Path(path)
    if (folder / "hf").is_dir():
        folder = folder / "hf"
    if not folder.is_dir():
        raise FileNotFoundError(f"policy folder not found: {path}")
    return folder


def variant_title(key: str) -> str:
    """A readable row title for a results key (single_shot, sqr_3, oracle_next_2, grounding_only...)."""
    if key == SINGLE_SHOT:
        return "Single shot (no refinement)"
    if key == GROUNDING_ONLY:
        return "Ground-truth video given (grounding only)"
    oracle = key.startswith("oracle_")
    refiner, _, turns = key.removeprefix("oracle_").rpartition("_")
    name = {"sqr": "SQR", "hqr": "Text rewrite (HQR)", "next": "Next candidate"}.get(refiner, refiner)
    plural = "s" if turns != "1" else ""
    return f"{name}, {turns} turn{plural}" + (", oracle verifier" if oracle else "")


def variant_runs(cfg: EvalConfig) -> list[VariantRun]:
    """The runs of an evaluation config, in order (one run of `agent` when no variants are listed)."""
    from vsr_model.agent import Refiner, Verifier

    variants = cfg.variants or [
        EvalVariant(
            verifier=cfg.agent.verifier.value, refiner=cfg.agent.refiner.value, max_turns=cfg.agent.max_turns
        )
    ]
    runs = []
    for v in variants:
        key = variant_key(v, cfg.agent)
        agent = replace(
            cfg.agent,
            verifier=Verifier(v.verifier),
            refiner=Refiner(v.refiner),
            max_turns=v.max_turns or cfg.agent.max_turns,
        )
        runs.append(VariantRun(key, v.title or variant_title(key), agent))
    return runs


def paper_table(rows: Sequence[tuple[str, dict[str, float]]], columns=PAPER_COLUMNS) -> str:
    """Markdown results table, one row per (method name, summary)."""
    header = "| Method | " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "| --- " * (len(columns) + 1) + "|"]
    for name, summary in rows:
        cells = []
        for key, _ in columns:
            value = summary.get(key)
            cells.append("n/a" if value is None or value != value else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_per_turn(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [int(r["turn"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for key, label in (
        ("vcmr_r1_iou0.5", "VCMR R@1 IoU=0.5"),
        ("vr_r1", "VR R@1 (verified)"),
        ("ver_lenient", "VER"),
        ("active", "queries still searching"),
    ):
        ax.plot(turns, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("turn")
    ax.set_ylabel("%")
    ax.set_xticks(turns)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_variants(
    results: dict[str, dict[str, float]],
    intervals: dict[str, dict[str, list[float]]],
    path: Path,
    metrics: Sequence[str] = ("vr_post_refinement_r1", "vcmr_r1_iou0.5", "ver_turn1"),
) -> None:
    """Grouped bars of `metrics` per variant with their 95% bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(results)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(keys) * len(metrics)), 4.2), dpi=120)
    width = 0.8 / len(metrics)
    x = np.arange(len(keys))
    for j, metric in enumerate(metrics):
        values = [results[k].get(metric, float("nan")) for k in keys]
        low = [values[i] - intervals.get(k, {}).get(metric, [values[i]] * 2)[0] for i, k in enumerate(keys)]
        high = [intervals.get(k, {}).get(metric, [values[i]] * 2)[1] - values[i] for i, k in enumerate(keys)]
        ax.bar(x + j * width, values, width, yerr=[low, high], capsize=2, label=metric)
    ax.set_xticks(x + 0.4 - width / 2, keys, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title("Agent variants on the test split (95% bootstrap intervals)")
    ax.grid(axis="y", alpha=0.3)
    _save_figure(fig, path)


def _summary(traces) -> tuple[dict[str, float], list[dict[str, float]]]:
    from vsr_model.metrics import per_turn_table, summarize

    return summarize(traces), per_turn_table(traces)


def write_results(output: Path, key: str, title: str, traces, config: dict[str, Any]) -> dict[str, float]:
    """traces.jsonl, summary.json (summary + per-turn table), results.md and per_turn.png of one variant."""
    from vsr_model.fileio import atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "traces.jsonl", "".join(json.dumps(t.to_dict()) + "\n" for t in traces))
    summary, per_turn = _summary(traces)
    write_json_atomic(
        output / "summary.json",
        {"name": title, "key": key, "summary": summary, "per_turn": per_turn, "config": config},
    )
    atomic_write_text(output / "results.md", paper_table([(title, summary)]))
    plot_per_turn(per_turn, output / "per_turn.png", title)
    return summary


def cut_runs(runs: dict[str, list], titles: dict[str, str], single_shot_from: str | None) -> None:
    """Add to `runs` every run cut to its first t turns (keyed {refiner}_{t}) and, from
    `single_shot_from`, the single-shot agent (turn 1 without refinement). In place."""
    for key in list(runs):
        base, _, turns = key.rpartition("_")
        for t in range(1, int(turns)):
            cut_key = f"{base}_{t}"
            if cut_key not in runs:
                runs[cut_key] = [trace.cut(t) for trace in runs[key]]
                titles[cut_key] = variant_title(cut_key)
    if single_shot_from is not None:
        runs[SINGLE_SHOT] = [trace.cut(1, final_refine=False) for trace in runs[single_shot_from]]
        titles[SINGLE_SHOT] = variant_title(SINGLE_SHOT)


def baselines_of(key: str, keys: Sequence[str]) -> list[str]:
    """What a variant is compared with: single shot, and the next candidate with the same verifier and
    turns (the refiner's gain over exclusion alone)."""
    out = []
    if key != SINGLE_SHOT and SINGLE_SHOT in keys and key != GROUNDING_ONLY:
        out.append(SINGLE_SHOT)
    prefix = "oracle_" if key.startswith("oracle_") else ""
    refiner, _, turns = key.removeprefix(prefix).rpartition("_")
    nxt = f"{prefix}next_{turns}"
    if refiner in ("sqr", "hqr") and nxt in keys:
        out.append(nxt)
    return out


def intervals(runs: dict[str, list], samples: int, seed: int) -> tuple[dict, dict]:
    """(ci.<key>.<metric>, paired_ci.<key>__vs__<baseline>.<metric>), 95% bootstrap, over queries."""
    import numpy as np

    from vsr_model.metrics import paired_bootstrap_ci, score_matrix

    if samples == 0:
        return {}, {}
    scores = {key: score_matrix(traces) for key, traces in runs.items()}
    ci, paired = {}, {}
    for key, matrix in scores.items():
        ci[key] = {}
        for metric in CI_METRICS:
            values = matrix[metric]
            ci[key][metric] = list(paired_bootstrap_ci(values, np.zeros_like(values), samples, seed))
        for base in baselines_of(key, list(scores)):
            if len(runs[base]) != len(runs[key]):
                continue
            paired[f"{key}__vs__{base}"] = {
                metric: list(paired_bootstrap_ci(matrix[metric], scores[base][metric], samples, seed))
                for metric in CI_METRICS
            }
    return ci, paired


def _shard_file(output: Path, key: str, rank: int) -> Path:
    return output / "shards" / key / f"rank-{rank:05d}.jsonl"


def _write_shard(output: Path, key: str, rank: int, traces) -> None:
    from vsr_model.fileio import atomic_write_text

    path = _shard_file(output, key, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(t.to_dict()) + "\n" for t in traces))


def _merge_shards(output: Path, key: str, world_size: int, moments) -> list:
    from vsr_model.protocol import QueryTrace

    rows = []
    for rank in range(world_size):
        text = _shard_file(output, key, rank).read_text()
        rows.extend(json.loads(line) for line in text.splitlines() if line.strip())
    order = {m.query_id: i for i, m in enumerate(moments)}
    rows.sort(key=lambda r: order[r["query_id"]])
    if len(rows) != len(moments):
        raise RuntimeError(f"{key}: merged {len(rows)} traces for {len(moments)} queries")
    return [QueryTrace.from_dict(r) for r in rows]


def _progress_bar(queries: int, max_turns: int, name: str, enabled: bool):
    """A tqdm bar with an ETA for run_agent's `progress`: it advances by one of a query's `max_turns`
    slots per verify turn, and by all its remaining slots when the query ends early."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=queries * max_turns,
        desc=f"eval {name}: queries 0/{queries}",
        disable=not enabled,
        dynamic_ncols=True,
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    done = {"queries": 0, "turns": 0}

    def progress(turn: int, verified: int, finished: int) -> None:
        done["queries"] += finished
        done["turns"] += verified
        bar.set_description_str(
            f"eval {name}: queries {done['queries']}/{queries}, verify turns {done['turns']}", refresh=False
        )
        bar.update(verified + finished * (max_turns - turn))

    return bar, progress


def run_eval(cfg: EvalConfig, policy=None, engine=None, corpus=None) -> Path | None:
    """Evaluate every variant; return the combined summary path (on rank 0; None on other ranks).
    ``policy`` / ``engine`` / ``corpus`` may be passed in already loaded; otherwise they are loaded
    from the paths in ``cfg``."""
    from vsr_model.agent import GenerationMemo, Verifier, run_agent
    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_model.engine.base import SearchEngine
    from vsr_model.policy import load_policy

    dist = init_distributed(DeepSpeedSettings(dist_backend=cfg.dist_backend))
    seed_everything(cfg.seed, dist.rank)
    moments = read_moments(cfg.queries, cfg.queries_format).moments
    if cfg.max_queries is not None:
        moments = moments[: cfg.max_queries]
    if not moments:
        raise ValueError(f"{cfg.queries}: no queries to evaluate")
    shard = moments[dist.rank :: dist.world_size]
    output = Path(cfg.output_dir)

    if policy is None:
        policy = load_policy(policy_directory(cfg.policy))
    policy = policy.to(dist.device)
    engine = engine if engine is not None else SearchEngine.load(cfg.engine_dir)
    corpus = corpus if corpus is not None else Corpus.from_jsonl(cfg.corpus, split=cfg.corpus_split)
    missing = sorted({m.video_id for m in moments} - set(corpus.ids))
    if missing:
        raise ValueError(
            f"{len(missing)} ground-truth videos are not in the corpus {cfg.corpus}: {missing[:5]}"
        )
    runs = variant_runs(cfg)
    log.info("rank %d evaluates %d of %d queries, variants %s", dist.rank, len(shard), len(moments),
             [r.key for r in runs])  # fmt: skip
    memo = GenerationMemo()
    for run in runs:
        bar, progress = _progress_bar(len(shard), run.agent.max_turns, run.key, enabled=dist.is_main)
        traces = run_agent(policy, engine, corpus, shard, run.agent, progress, memo=memo) if shard else []
        bar.close()
        _write_shard(output, run.key, dist.rank, traces)
    if cfg.grounding_only:
        agent = replace(cfg.agent, verifier=Verifier.POLICY, max_turns=1, final_refine=False)
        first = [m.video_id for m in shard]
        traces = (
            run_agent(policy, engine, corpus, shard, agent, first_videos=first, memo=memo) if shard else []
        )
        _write_shard(output, GROUNDING_ONLY, dist.rank, traces)
    log.info("rank %d: %d distinct responses generated, %d reused", dist.rank, memo.misses, memo.hits)
    barrier()
    if not dist.is_main:
        return None

    merged = {run.key: _merge_shards(output, run.key, dist.world_size, moments) for run in runs}
    titles = {run.key: run.title for run in runs}
    if cfg.cut_turns:
        first_policy = next((r.key for r in runs if r.agent.verifier is Verifier.POLICY), None)
        cut_runs(merged, titles, first_policy)
    if cfg.grounding_only:
        merged[GROUNDING_ONLY] = _merge_shards(output, GROUNDING_ONLY, dist.world_size, moments)
        titles[GROUNDING_ONLY] = variant_title(GROUNDING_ONLY)
    return write_evaluation(output, merged, titles, cfg)


def write_evaluation(output: Path, runs: dict[str, list], titles: dict[str, str], cfg: EvalConfig) -> Path:
    """Per-variant folders, the combined summary.json with intervals, results.md, plots, report.html."""
    from vsr_model.fileio import atomic_write_text
    from vsr_model.metrics import majority_rate

    config = config_to_dict(cfg)
    order = _display_order(runs)
    results = {}
    for key in order:
        results[key] = write_results(output / key, key, titles[key], runs[key], {**config, "variant": key})
    ci, paired = intervals({k: runs[k] for k in order}, cfg.bootstrap_samples, cfg.seed)
    table = paper_table([(titles[k], results[k]) for k in order])
    summary = {
        "results": results,
        "order": order,  # the table's row order (the file's keys are sorted)
        "titles": {k: titles[k] for k in order},
        "ci": ci,
        "paired_ci": paired,
        "majority_rate": majority_rate(runs[order[0]]),
        "queries": len(runs[order[0]]),
        "config": config,
        "table_markdown": table,
    }
    if GROUNDING_ONLY in results:
        summary[GROUNDING_ONLY] = results[GROUNDING_ONLY]
    write_json_atomic(output / "summary.json", summary)
    atomic_write_text(output / "results.md", table + "\n" + paired_table(paired) + "\n")
    plot_variants(
        {k: results[k] for k in order if k != GROUNDING_ONLY}, ci, output / "plots" / "variants.png"
    )
    if cfg.report_cards > 0:
        write_report_page(output, output, order, summary, cfg.report_cards)
    log.info("results:\n%s", table)
    return output / "summary.json"


def _display_order(runs: dict[str, list]) -> list[str]:
    def rank(key: str) -> tuple:
        if key == SINGLE_SHOT:
            return (0, "", 0)
        if key == GROUNDING_ONLY:
            return (3, "", 0)
        oracle = key.startswith("oracle_")
        refiner, _, turns = key.removeprefix("oracle_").rpartition("_")
        return (1 + oracle, ("next", "sqr", "hqr").index(refiner) if refiner in ("next", "sqr", "hqr") else 9,
                int(turns))  # fmt: skip

    return sorted(runs, key=rank)


def paired_table(
    paired: dict[str, dict[str, list[float]]], metrics=("vr_post_refinement_r1", "vcmr_r1_iou0.5")
) -> str:
    """Markdown table of the paired 95% intervals of each comparison's differences."""
    if not paired:
        return ""
    head = "| Comparison | " + " | ".join(f"diff. {m} (95% CI)" for m in metrics) + " |"
    lines = [head, "| --- " * (len(metrics) + 1) + "|"]
    for name, values in paired.items():
        cells = [f"[{values[m][0]:+.1f}, {values[m][1]:+.1f}]" for m in metrics]
        lines.append(f"| {name.replace('__vs__', ' vs ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report_page(page_dir: Path, eval_dir: Path, order: list[str], summary: dict, cards: int) -> Path:
    """report.html in `page_dir` for the variants of evaluation `eval_dir` (vsr_train.report_html)."""
    from vsr_train.report_html import ReportSettings, report_eval_runs

    plots = sorted((eval_dir / "plots").glob("*.png")) + sorted((page_dir / "plots").glob("*.png"))
    return report_eval_runs(
        page_dir, [eval_dir / key for key in order], plots, ReportSettings(max_cards=cards), summary=summary
    )
