"""`vsr eval`: the multi-turn agent (vsr_model.agent) over a query split, sharded over ranks, scored with
vsr_model.metrics. Writes per-query traces (jsonl), a summary (json), the results table in the paper's
layout (Markdown) and a per-turn plot (PNG)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsr_train.checkpoint import write_json_atomic
from vsr_train.config import DeepSpeedSettings, EvalConfig, config_to_dict
from vsr_train.runtime import barrier, init_distributed, seed_everything

log = logging.getLogger(__name__)

# The paper's table: VCMR R@1 at three IoUs, then VER and VR R@1 (plus what our runs add).
PAPER_COLUMNS = (
    ("vcmr_r1_iou0.3", "VCMR R@1 IoU=0.3"),
    ("vcmr_r1_iou0.5", "IoU=0.5"),
    ("vcmr_r1_iou0.7", "IoU=0.7"),
    ("miou", "mIoU"),
    ("ver_lenient", "VER"),
    ("ver_strict", "VER (strict)"),
    ("vr_post_refinement_r1", "VR R@1"),
    ("vr_verified_r1", "VR R@1 (verified)"),
    ("generated_tokens_per_query", "Gen. tokens / query"),
)


def policy_directory(path: str) -> Path:
    """A saved policy folder, or a training checkpoint whose hf/ holds it."""
    folder = Path(path)
    if (folder / "hf").is_dir():
        folder = folder / "hf"
    if not folder.is_dir():
        raise FileNotFoundError(f"policy folder not found: {path}")
    return folder


def paper_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """Markdown results table, one row per (method name, summary)."""
    header = "| Method | " + " | ".join(label for _, label in PAPER_COLUMNS) + " |"
    lines = [header, "| --- " * (len(PAPER_COLUMNS) + 1) + "|"]
    for name, summary in rows:
        cells = []
        for key, _ in PAPER_COLUMNS:
            value = summary.get(key)
            cells.append("n/a" if value is None else f"{value:.1f}")
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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _agent_config(cfg: EvalConfig):
    from vsr_model.agent import AgentConfig
    from vsr_model.policy import GenerationSettings
    from vsr_model.protocol import RefinementMode

    return AgentConfig(
        max_turns=cfg.max_turns,
        exclude_seen=cfg.exclude_seen_videos,
        accumulate_soft_tokens=cfg.accumulate_soft_tokens,
        refinement=RefinementMode.HARD if cfg.refinement == "hqr" else RefinementMode.SOFT,
        final_refine=cfg.refinement != "none",
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        generation=GenerationSettings(max_new_tokens=cfg.max_new_tokens, do_sample=False),
    )


def _generated_tokens(trace_row: dict[str, Any], tokenizer=None) -> int:
    """Tokens the policy produced for one query: every turn's response (+ N latents per soft refinement,
    which is what SQR generates instead of rewrite text). Traces record each response's token count;
    older ones are re-tokenised with ``tokenizer``."""
    total = 0
    for turn in trace_row["turns"]:
        if turn.get("response_tokens") is not None:
            total += int(turn["response_tokens"])
        elif tokenizer is not None:
            total += len(tokenizer.encode(turn["response"], add_special_tokens=False))
        else:
            raise ValueError(
                f"query {trace_row.get('query_id')!r}: a turn without response_tokens and no tokenizer to count it"
            )
        if turn.get("rewritten_query") is None:
            total += int(turn.get("refinement_tokens", 0))
    return total


def write_results(
    output: Path,
    name: str,
    rows: list[dict[str, Any]],
    max_turns: int,
    config: dict[str, Any],
    tokenizer=None,
) -> Path:
    """traces.jsonl, summary.json (summary + per-turn table), results.md, per_turn.png and report.html
    (vsr_train.report_html) of one run."""
    from vsr_model.fileio import atomic_write_text
    from vsr_model.metrics import per_turn_table, summarize
    from vsr_model.protocol import QueryTrace

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "traces.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    all_traces = [QueryTrace.from_dict(r) for r in rows]
    summary = summarize(all_traces)
    tokens = [_generated_tokens(r, tokenizer) for r in rows]
    summary["generated_tokens_per_query"] = sum(tokens) / len(tokens)
    per_turn = per_turn_table(all_traces, max_turns)
    write_json_atomic(
        output / "summary.json", {"name": name, "summary": summary, "per_turn": per_turn, "config": config}
    )
    table = paper_table([(name, summary)])
    (output / "results.md").write_text(table)
    plot_per_turn(per_turn, output / "per_turn.png", name)
    log.info("results:\n%s", table)
    from vsr_train.report_html import report_eval_runs

    report_eval_runs(output, [output], [output / "per_turn.png"])
    return output / "summary.json"


def derive_shorter_run(
    source: Path, output: Path, name: str, max_turns: int, final_refine: bool = True
) -> Path:
    """The results of the same agent with fewer verify turns (``final_refine=False``: single shot, no
    refinement), cut from the traces of a longer greedy run (see QueryTrace.cut): no model runs again."""
    from vsr_model.protocol import QueryTrace

    summary_file = source / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{source} holds no finished evaluation (summary.json)")
    source_config = json.loads(summary_file.read_text())["config"]
    if max_turns > int(source_config["max_turns"]):
        raise ValueError(f"cannot cut {max_turns} turns from a run of {source_config['max_turns']}")
    if source_config["refinement"] != "sqr" and not (max_turns == 1 and not final_refine):
        raise ValueError("only SQR runs (or single shot from any run) can be cut to fewer turns")
    rows = [json.loads(line) for line in (source / "traces.jsonl").read_text().splitlines() if line.strip()]
    cut = [QueryTrace.from_dict(r).cut(max_turns, final_refine).to_dict() for r in rows]
    config = {
        **source_config,
        "max_turns": max_turns,
        "refinement": source_config["refinement"] if final_refine else "none",
        "name": name,
        "derived_from": str(source),
    }
    return write_results(output, name, cut, max_turns, config)


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
    """Evaluate; return the summary path (on rank 0; None on other ranks). ``policy`` / ``engine`` /
    ``corpus`` may be passed in already loaded (a pipeline that just trained them); otherwise they are
    loaded from the paths in ``cfg``."""
    from vsr_model.agent import run_agent
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
    shard_dir = output / "traces"
    shard_dir.mkdir(parents=True, exist_ok=True)

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
    log.info("rank %d evaluates %d of %d queries", dist.rank, len(shard), len(moments))
    bar, progress = _progress_bar(len(shard), cfg.max_turns, cfg.name, enabled=dist.is_main)
    traces = run_agent(policy, engine, corpus, shard, _agent_config(cfg), progress) if shard else []
    bar.close()
    shard_file = shard_dir / f"rank-{dist.rank:05d}.jsonl"
    tmp = shard_file.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in traces))
    tmp.replace(shard_file)
    barrier()
    if not dist.is_main:
        return None

    rows = []
    for rank in range(dist.world_size):
        path = shard_dir / f"rank-{rank:05d}.jsonl"
        rows.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    order = {m.query_id: i for i, m in enumerate(moments)}
    rows.sort(key=lambda r: order[r["query_id"]])
    if len(rows) != len(moments):
        raise RuntimeError(f"merged {len(rows)} traces for {len(moments)} queries")
    return write_results(output, cfg.name, rows, cfg.max_turns, config_to_dict(cfg), policy.tokenizer)
