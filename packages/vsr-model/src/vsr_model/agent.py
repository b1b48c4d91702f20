"""The multi-turn agent loop, batched over queries: retrieve -> verify -> refine -> ground.

Each turn is a fresh prompt (query + the newly retrieved video). A `matched` verdict ends the query
with its span as the answer; anything else (including an unreadable verdict) refines the query and
searches again, up to `max_turns` verify turns. After a rejection on the last turn the agent still
refines and searches once more (`final_refine`), so the post-refinement ranking is recorded.

Refinement is Soft Query Refinement (latents from the policy, appended to the query inside the
engine's text encoder) or, as the baseline, hard query refinement (the policy rewrites the query).
A soft-mode response without <REFINE> cannot be refined: the agent then searches again with the
previous query (excluding seen videos) and records zero refinement tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from vsr_model.policy.base import GenerationSettings, VerifyInput, VideoPolicy
from vsr_model.protocol import QueryTrace, RefinementMode, TurnTrace, parse_response
from vsr_model.sqr import check_engine_dims, latent_rollout, refined_query
from vsr_model.video import FrameSampling

logger = logging.getLogger(__name__)


class SearchEngine(Protocol):
    embed_dim: int
    query_input_dim: int

    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor: ...

    def search(
        self, queries: torch.Tensor, k: int, exclude: Sequence[set[str]] | None = None
    ) -> list[list[Any]]: ...


class Corpus(Protocol):
    def clip(self, video_id: str, sampling: FrameSampling | None = None) -> Any: ...


@dataclass
class AgentConfig:
    """`max_turns`: verify turns per query (paper default 2). `exclude_seen`: never show a video twice.
    `accumulate_soft_tokens`: paper q_{t+1} = [q_t ; soft tokens] (True) or the authors' code, original
    text + this turn's tokens (False). `top_k`: ranking depth kept for VR. `batch_size`: queries per
    policy call. `sampling`: frame sampling passed to `corpus.clip` (None: the corpus default).
    `use_sessions`: search through `engine.session(...)` / `session.refine(...)` (vsr_index sessions,
    which re-use the previous turn's candidate pool) instead of a fresh `engine.search` per turn. Either
    way `exclude_seen` drops only the videos the policy was *shown* (each turn's top-1; the session is
    told them with `session.exclude`), so both give the same rankings for any top_k."""

    max_turns: int = 2
    exclude_seen: bool = True
    accumulate_soft_tokens: bool = True
    refinement: RefinementMode = RefinementMode.SOFT
    final_refine: bool = True
    top_k: int = 10
    batch_size: int = 8
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=768))
    sampling: FrameSampling | None = None
    use_sessions: bool = False

    def __post_init__(self) -> None:
        self.refinement = RefinementMode.parse(self.refinement)
        if isinstance(self.generation, dict):
            self.generation = GenerationSettings(**self.generation)
        if isinstance(self.sampling, dict):
            self.sampling = FrameSampling(**self.sampling)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError(f"top_k and batch_size must be >= 1, got {self.top_k}, {self.batch_size}")
        if self.generation.num_return_sequences != 1:
            raise ValueError("the agent loop takes one response per query; sample groups in the trainer")

    @classmethod
    def from_dict(cls, values: dict) -> AgentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown agent settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class _QueryState:
    query_id: str
    query: str
    gt_video: str | None
    gt_span: tuple[float, float] | None
    engine_text: str
    embedding: torch.Tensor
    hits: list[Any]
    soft_tokens: torch.Tensor | None = None
    session: Any = None
    seen: set[str] = field(default_factory=set)
    done: bool = False
    trace: QueryTrace | None = None


def _moment_fields(moment: Any) -> tuple[str, str, str | None, tuple[float, float] | None]:
    query_id = str(moment.query_id)
    gt_video = getattr(moment, "video_id", None)
    start, end = getattr(moment, "start", None), getattr(moment, "end", None)
    span = (float(start), float(end)) if start is not None and end is not None else None
    return query_id, moment.query, gt_video, span


def _search(engine: SearchEngine, embeddings: torch.Tensor, states: list[_QueryState], config: AgentConfig):
    embeddings = embeddings.detach()
    if config.use_sessions:
        results = []
        for state, emb in zip(states, embeddings, strict=True):
            excluded = state.seen if config.exclude_seen else ()
            if state.session is None:
                state.session = engine.session(emb[None], config.top_k, exclude_seen=False, exclude=excluded)
                results.append(list(state.session.hits))
            else:
                state.session.exclude(excluded)  # videos shown since the last turn; repeats are no-ops
                results.append(list(state.session.refine(emb[None], config.top_k)))
    else:
        exclude = [set(s.seen) for s in states] if config.exclude_seen else None
        results = engine.search(embeddings, config.top_k, exclude=exclude)
    if len(results) != len(states):
        raise RuntimeError(f"engine returned {len(results)} result lists for {len(states)} queries")
    for state, hits in zip(states, results, strict=True):
        if not hits:
            raise RuntimeError(
                f"search returned no video for query {state.query_id!r} ({len(state.seen)} videos excluded)"
            )
    return results


def soft_refine(
    policy: VideoPolicy,
    engine: SearchEngine,
    items: Sequence[VerifyInput],
    completions: Sequence[Sequence[int]],
    engine_texts: Sequence[str],
    previous_soft_tokens: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Refined query embeddings (B, D) and each row's soft tokens (M, H_e) after one SQR step.

    `previous_soft_tokens` (accumulate mode) are prepended per row; rows may hold different counts,
    so rows are embedded in groups of equal history length.
    """
    batch = policy.encode(items, completions).to(policy.device)
    latents = latent_rollout(policy, batch).latents
    previous = list(previous_soft_tokens) if previous_soft_tokens is not None else [None] * len(items)
    embeddings = torch.empty(len(items), policy.sqr.config.embed_dim)
    tokens_out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    groups: dict[int, list[int]] = {}
    for i, prev in enumerate(previous):
        groups.setdefault(0 if prev is None else prev.shape[0], []).append(i)
    for history, rows in groups.items():
        prev = torch.stack([previous[i] for i in rows]) if history else None
        emb, tokens = refined_query(policy.sqr, engine, [engine_texts[i] for i in rows], latents[rows], prev)
        embeddings[rows] = emb.detach().float().cpu()
        for j, i in enumerate(rows):
            tokens_out[i] = tokens[j].detach()
    return embeddings, tokens_out


def run_agent(
    policy: VideoPolicy,
    engine: SearchEngine,
    corpus: Corpus,
    moments: Sequence[Any],
    config: AgentConfig,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[QueryTrace]:
    """Run the loop over `moments` (records with query_id, query and, for scoring, video_id/start/end).

    `progress(turn, verified, finished)`, for a progress bar, is called after each verify turn of each
    batch: `verified` queries were verified at turn `turn`, and `finished` of them end there (those
    that matched; at the last turn, all of them)."""
    if config.refinement is RefinementMode.SOFT:
        check_engine_dims(policy.sqr, engine)
    traces: list[QueryTrace] = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, len(moments), config.batch_size):
            traces.extend(
                _run_batch(
                    policy, engine, corpus, moments[start : start + config.batch_size], config, progress
                )
            )
    finally:
        policy.train(was_training)
    return traces


@torch.no_grad()
def _run_batch(policy, engine, corpus, moments, config: AgentConfig, progress=None) -> list[QueryTrace]:
    states = []
    for moment in moments:
        query_id, query, gt_video, gt_span = _moment_fields(moment)
        states.append(
            _QueryState(
                query_id, query, gt_video, gt_span, engine_text=query, embedding=torch.empty(0), hits=[]
            )
        )
        states[-1].trace = QueryTrace(query_id, query, gt_video, gt_span)
    embeddings = engine.encode_query([s.query for s in states]).detach().float().cpu()
    for state, emb, hits in zip(states, embeddings, _search(engine, embeddings, states, config), strict=True):
        state.embedding, state.hits = emb, hits

    for turn in range(1, config.max_turns + 1):
        active = [s for s in states if not s.done]
        if not active:
            break
        items = [
            VerifyInput(s.query, corpus.clip(s.hits[0].video_id, config.sampling), config.refinement)
            for s in active
        ]
        generation = policy.generate(policy.encode(items), config.generation)
        rejected: list[tuple[int, _QueryState]] = []
        for i, state in enumerate(active):
            parsed = parse_response(generation.texts[i])
            shown = state.hits[0].video_id
            record = TurnTrace(
                turn=turn,
                ranking=[h.video_id for h in state.hits],
                scores=[float(h.score) for h in state.hits],
                response=generation.texts[i],
                parsed=parsed,
                label_matched=(shown == state.gt_video) if state.gt_video is not None else None,
                response_tokens=len(generation.token_ids[i]),
            )
            state.trace.turns.append(record)
            state.seen.add(shown)
            if parsed.matched:
                state.done = True
                state.trace.final_ranking = list(record.ranking)
            else:
                rejected.append((i, state))
        if progress is not None:
            progress(
                turn, len(active), len(active) if turn == config.max_turns else len(active) - len(rejected)
            )
        if not rejected or (turn == config.max_turns and not config.final_refine):
            break
        _refine(policy, engine, items, generation.token_ids, rejected, config)
        if turn == config.max_turns:
            for _, state in rejected:
                state.trace.final_ranking = [h.video_id for h in state.hits]
    for state in states:
        if not state.trace.final_ranking and state.trace.turns:
            state.trace.final_ranking = list(state.trace.turns[-1].ranking)
    return [s.trace for s in states]


def _refine(policy, engine, items, completions, rejected, config: AgentConfig) -> None:
    """Refine every rejected query in place and search again."""
    refine_id = policy.refine_token_id
    if config.refinement is RefinementMode.SOFT:
        soft = [(i, s) for i, s in rejected if refine_id in completions[i]]
        for i, state in rejected:
            if refine_id not in completions[i]:
                logger.info(
                    "query %s: no <REFINE> in the response, searching again unrefined", state.query_id
                )
        if soft:
            previous = [s.soft_tokens if config.accumulate_soft_tokens else None for _, s in soft]
            embeddings, tokens = soft_refine(
                policy,
                engine,
                [items[i] for i, _ in soft],
                [completions[i] for i, _ in soft],
                [s.engine_text for _, s in soft],
                previous,
            )
            for (_, state), emb, tok in zip(soft, embeddings, tokens, strict=True):
                state.embedding, state.soft_tokens = emb, tok
                state.trace.turns[-1].refinement_tokens = policy.sqr.config.num_latents
    else:
        rewrites = []
        for _, state in rejected:
            turn = state.trace.turns[-1]
            if turn.parsed.rewritten_query:
                turn.rewritten_query = turn.parsed.rewritten_query
                turn.refinement_tokens = len(
                    policy.tokenizer.encode(turn.rewritten_query, add_special_tokens=False)
                )
                state.engine_text = turn.rewritten_query
                rewrites.append(state)
        if rewrites:
            embeddings = engine.encode_query([s.engine_text for s in rewrites]).detach().float().cpu()
            for state, emb in zip(rewrites, embeddings, strict=True):
                state.embedding = emb
    states = [s for _, s in rejected]
    results = _search(engine, torch.stack([s.embedding for s in states]), states, config)
    for state, hits in zip(states, results, strict=True):
        state.hits = hits
