"""THE multi-turn agent loop, batched over queries: retrieve -> verify -> refine -> ground.

Evaluation, GRPO rollouts and the demo all run this one loop; training reads what it needs (the
completion token ids, the refined query embeddings) from the traces it returns.

Each turn is a fresh prompt (query + the newly retrieved video). Two parts are pluggable:

- the verifier decides whether the shown video ends the search: `policy` (the policy's own
  `<answer>`) or `oracle` (the ground truth: shown video == ground-truth video). The policy answers in
  every turn either way, so its verdict accuracy and its span are measured on the path taken;
- the refiner says how a rejected query searches again: `sqr` (Soft Query Refinement: latents from
  the policy, appended to the query inside the engine's text encoder), `hqr` (the policy rewrites the
  query as text) or `none` (the next candidate: the same query, the shown videos excluded).

A search excludes every video already shown (`exclude_seen`), so `none` is the honest baseline of a
refiner: whatever SQR or HQR gain over it is not exclusion. An `sqr` response without <REFINE> (or an
`hqr` response without a <query>) cannot be refined: that query searches again unrefined, and the turn
records zero refinement tokens. After a rejection on the last turn the agent still refines and searches
once more (`final_refine`), so the post-refinement ranking is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch

from vsr_model.policy.base import Generation, GenerationSettings, VerifyInput, VideoPolicy
from vsr_model.protocol import QueryTrace, RefinementMode, TurnTrace, parse_response
from vsr_model.sqr import check_engine_dims, latent_rollout, refined_query
from vsr_model.video import FrameSampling

logger = logging.getLogger(__name__)


class Verifier(str, Enum):
    POLICY = "policy"
    ORACLE = "oracle"


class Refiner(str, Enum):
    SQR = "sqr"
    HQR = "hqr"
    NONE = "none"


class SearchMode(str, Enum):
    """How the index is searched: `plain` one batched search per turn; `sessions` a vsr_index session per
    query that re-uses its candidate pool; `groups` one `refine_group` call per group of trajectories
    sharing an original query (GRPO). All three return the same rankings."""

    PLAIN = "plain"
    SESSIONS = "sessions"
    GROUPS = "groups"


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        raise ValueError(f"unknown {name} {value!r}; expected one of {[m.value for m in kind]}") from None


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
    """`max_turns`: verify turns per query (paper default 2). `verifier` / `refiner`: the pluggable parts
    (module docstring). `exclude_seen`: never show a video twice. `accumulate_soft_tokens`: the paper's
    q_{t+1} = [q_t ; soft tokens] (True) or the authors' code, original text + this turn's tokens
    (False). `final_refine`: refine and search once more after a rejection on the last turn (False:
    the single-shot agent, which never refines). `top_k`: ranking depth kept for VR. `batch_size`:
    queries per policy call. `sampling`: frame sampling for `corpus.clip` (None: the corpus default).
    `search`: SearchMode."""

    max_turns: int = 2
    verifier: Verifier = Verifier.POLICY
    refiner: Refiner = Refiner.SQR
    exclude_seen: bool = True
    accumulate_soft_tokens: bool = False
    final_refine: bool = True
    top_k: int = 10
    batch_size: int = 8
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=768))
    sampling: FrameSampling | None = None
    search: SearchMode = SearchMode.PLAIN

    def __post_init__(self) -> None:
        self.verifier = _enum(Verifier, self.verifier, "verifier")
        self.refiner = _enum(Refiner, self.refiner, "refiner")
        self.search = _enum(SearchMode, self.search, "search mode")
        if isinstance(self.generation, dict):
            self.generation = GenerationSettings(**self.generation)
        if isinstance(self.sampling, dict):
            self.sampling = FrameSampling(**self.sampling)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError(f"top_k and batch_size must be >= 1, got {self.top_k}, {self.batch_size}")
        if self.generation.num_return_sequences != 1:
            raise ValueError("the agent loop takes one response per query: repeat a query for a group")

    @property
    def prompt_mode(self) -> RefinementMode:
        """The protocol the policy answers in: text rewrites for HQR, <REFINE> otherwise."""
        return RefinementMode.HARD if self.refiner is Refiner.HQR else RefinementMode.SOFT


class GenerationMemo:
    """Greedy responses by (protocol, query, shown video, frame sampling): greedy decoding gives the same
    response to the same prompt, so runs of several agent variants with one policy (evaluation runs every
    verifier x refiner combination) generate each distinct turn once. Never used when sampling."""

    def __init__(self) -> None:
        self._responses: dict[Hashable, tuple[list[int], str]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        item: VerifyInput, video_id: str, sampling: FrameSampling | None, max_new_tokens: int
    ) -> Hashable:
        return (
            item.mode.value,
            item.query,
            video_id,
            None if sampling is None else sampling.key(),
            max_new_tokens,
        )

    def __len__(self) -> int:
        return len(self._responses)

    def generate(
        self,
        policy: VideoPolicy,
        items: Sequence[VerifyInput],
        keys: Sequence[Hashable],
        settings: GenerationSettings,
    ) -> Generation:
        missing = [i for i, key in enumerate(keys) if key not in self._responses]
        unique = list(dict.fromkeys(keys[i] for i in missing))
        first = {key: next(i for i in missing if keys[i] == key) for key in unique}
        if unique:
            fresh = policy.generate(policy.encode([items[first[k]] for k in unique]), settings)
            for key, ids, text in zip(unique, fresh.token_ids, fresh.texts, strict=True):
                self._responses[key] = (list(ids), text)
        self.misses += len(unique)
        self.hits += len(keys) - len(unique)
        return Generation(
            token_ids=[list(self._responses[k][0]) for k in keys], texts=[self._responses[k][1] for k in keys]
        )


@dataclass
class _QueryState:
    index: int
    query_id: str
    query: str
    gt_video: str | None
    gt_span: tuple[float, float] | None
    group: Hashable
    engine_text: str = ""
    original: torch.Tensor | None = None  # the query text's own embedding (D,)
    embedding: torch.Tensor | None = None  # the embedding of the latest search (D,)
    hits: list[Any] = field(default_factory=list)
    soft_tokens: torch.Tensor | None = None
    gt_rank: int | None = None  # the ground-truth video's rank in the latest search
    session: Any = None
    seen: list[str] = field(default_factory=list)
    done: bool = False
    trace: QueryTrace | None = None


def _moment_fields(moment: Any) -> tuple[str, str, str | None, tuple[float, float] | None]:
    query_id = str(moment.query_id)
    gt_video = getattr(moment, "video_id", None)
    start, end = getattr(moment, "start", None), getattr(moment, "end", None)
    span = (float(start), float(end)) if start is not None and end is not None else None
    return query_id, moment.query, gt_video, span


def group_search(
    engine: Any,
    original: torch.Tensor,
    refined: torch.Tensor,
    seen: Sequence[Sequence[str]],
    exclude_seen: bool,
    k: int,
) -> list[list[Any]]:
    """Top-k hits for each refined query (G, D) of a group sharing `original` (1, D), each row excluding
    its own `seen` videos when `exclude_seen`: one `engine.refine_group` call for the whole group. It
    denies the videos every row has seen and asks for k plus the most videos one row has seen beyond
    them, so every row still gets its k best unseen videos (what a search per row returns)."""
    if refined.shape[0] != len(seen):
        raise ValueError(f"{refined.shape[0]} refined queries for {len(seen)} rows of seen videos")
    if not exclude_seen:
        return engine.refine_group(original, refined, k)
    sets = [set(s) for s in seen]
    shared = set.intersection(*sets) if sets else set()
    extra = max((len(s - shared) for s in sets), default=0)
    results = engine.refine_group(original, refined, min(k + extra, len(engine)), exclude=shared)
    return [[h for h in hits if h.video_id not in own][:k] for hits, own in zip(results, sets, strict=True)]


def _search(engine: SearchEngine, states: list[_QueryState], config: AgentConfig, first: bool) -> None:
    """Search for every state with its current embedding and store the hits (shown videos excluded)."""
    k = config.top_k
    excluded = [list(s.seen) if config.exclude_seen else [] for s in states]
    if config.search is SearchMode.SESSIONS:
        results = []
        for state, skip in zip(states, excluded, strict=True):
            emb = state.embedding[None]
            if state.session is None:
                state.session = engine.session(emb, k, exclude_seen=False, exclude=skip)
                results.append(list(state.session.hits))
            else:
                state.session.exclude(skip)  # videos shown since the last turn; repeats are no-ops
                results.append(list(state.session.refine(emb, k)))
    elif config.search is SearchMode.GROUPS and not first:
        results = [None] * len(states)
        by_group: dict[Hashable, list[int]] = {}
        for i, state in enumerate(states):
            by_group.setdefault(state.group, []).append(i)
        for rows in by_group.values():
            original = states[rows[0]].original[None]
            refined = torch.stack([states[i].embedding for i in rows])
            hits = group_search(
                engine, original, refined, [excluded[i] for i in rows], config.exclude_seen, k
            )
            for i, row_hits in zip(rows, hits, strict=True):
                results[i] = row_hits
    else:
        embeddings = torch.stack([s.embedding for s in states])
        results = engine.search(embeddings, k, exclude=[set(e) for e in excluded])
    if len(results) != len(states):
        raise RuntimeError(f"engine returned {len(results)} result lists for {len(states)} queries")
    rank_of = getattr(engine, "rank_of", None)
    for state, hits, skip in zip(states, results, excluded, strict=True):
        if not hits:
            raise RuntimeError(
                f"search returned no video for query {state.query_id!r} ({len(state.seen)} videos excluded)"
            )
        state.hits = list(hits)
        if rank_of is not None and state.gt_video is not None:
            state.gt_rank = rank_of(state.embedding[None], state.gt_video, set(skip))


def _show_first(engine: Any, state: _QueryState, video_id: str) -> None:
    """Put `video_id` first in the state's ranking (a pre-retrieved or ground-truth video), scored by the
    engine like any hit; the rest of the ranking follows without it."""
    from vsr_model.engine.base import Hit

    stored = engine.video_embeddings([video_id])[0].to(state.original)
    score = float(stored @ state.original)
    rest = [h for h in state.hits if h.video_id != video_id]
    state.hits = [Hit(video_id, score), *rest]


def soft_refine(
    policy: VideoPolicy,
    engine: SearchEngine,
    items: Sequence[VerifyInput],
    completions: Sequence[Sequence[int]],
    engine_texts: Sequence[str],
    previous_soft_tokens: Sequence[torch.Tensor | None] | None = None,
    originals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Refined query embeddings (B, D) and each row's soft tokens (M, H_e) after one SQR step.

    `previous_soft_tokens` (accumulate mode) are prepended per row; rows may hold different counts,
    so rows are embedded in groups of equal history length. `originals` (B, D): the query texts' own
    embeddings (the residual append mode adds the refinement to them).
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
        emb, tokens = refined_query(
            policy.sqr,
            engine,
            [engine_texts[i] for i in rows],
            latents[rows],
            prev,
            original=None if originals is None else originals[rows].to(latents.device),
        )
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
    *,
    first_videos: Sequence[str] | None = None,
    groups: Sequence[Hashable] | None = None,
    memo: GenerationMemo | None = None,
) -> list[QueryTrace]:
    """Run the loop over `moments` (records with query_id, query and, for scoring, video_id/start/end).

    `progress(turn, verified, finished)`, for a progress bar, is called after each verify turn of each
    batch: `verified` queries were verified at turn `turn`, and `finished` of them end there.
    `first_videos`: the video each query is shown at turn 1 instead of its top-1 (a pre-retrieved
    video, or the ground-truth one to measure grounding alone). `groups`: a key per query; queries with
    one key share their original query (a GRPO group; SearchMode.GROUPS searches them together).
    `memo`: a GenerationMemo shared by several runs with greedy decoding.
    """
    if first_videos is not None and len(first_videos) != len(moments):
        raise ValueError(f"{len(first_videos)} first videos for {len(moments)} queries")
    if groups is not None and len(groups) != len(moments):
        raise ValueError(f"{len(groups)} group keys for {len(moments)} queries")
    if config.verifier is Verifier.ORACLE:
        missing = [str(m.query_id) for m in moments if getattr(m, "video_id", None) is None]
        if missing:
            raise ValueError(f"the oracle verifier needs ground-truth videos; queries without: {missing[:5]}")
    if config.refiner is Refiner.SQR:
        check_engine_dims(policy.sqr, engine)
    if memo is not None and config.generation.do_sample:
        raise ValueError("a GenerationMemo replays greedy responses; it cannot serve sampled generation")
    traces: list[QueryTrace] = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, len(moments), config.batch_size):
            stop = start + config.batch_size
            traces.extend(
                _run_batch(
                    policy,
                    engine,
                    corpus,
                    moments[start:stop],
                    config,
                    progress,
                    first_videos[start:stop] if first_videos is not None else None,
                    groups[start:stop] if groups is not None else list(range(start, min(stop, len(moments)))),
                    memo,
                )
            )
    finally:
        policy.train(was_training)
    return traces


def _generate(policy, items, states, config: AgentConfig, memo: GenerationMemo | None) -> Generation:
    if memo is None:
        return policy.generate(policy.encode(items), config.generation)
    keys = [
        GenerationMemo.key(item, s.hits[0].video_id, config.sampling, config.generation.max_new_tokens)
        for item, s in zip(items, states, strict=True)
    ]
    return memo.generate(policy, items, keys, config.generation)


def _decide(config: AgentConfig, parsed, label: bool | None) -> bool:
    """True: the shown video ends the search as the answer."""
    if config.verifier is Verifier.ORACLE:
        return bool(label)
    return parsed.matched


@torch.no_grad()
def _run_batch(
    policy, engine, corpus, moments, config: AgentConfig, progress, first_videos, groups, memo
) -> list[QueryTrace]:
    states = []
    for i, (moment, group) in enumerate(zip(moments, groups, strict=True)):
        query_id, query, gt_video, gt_span = _moment_fields(moment)
        state = _QueryState(i, query_id, query, gt_video, gt_span, group, engine_text=query)
        state.trace = QueryTrace(query_id, query, gt_video, gt_span)
        states.append(state)
    embeddings = engine.encode_query([s.query for s in states]).detach().float().cpu()
    for state, emb in zip(states, embeddings, strict=True):
        state.original = state.embedding = emb
    _search(engine, states, config, first=True)
    if first_videos is not None:
        for state, video in zip(states, first_videos, strict=True):
            _show_first(engine, state, video)

    for turn in range(1, config.max_turns + 1):
        active = [s for s in states if not s.done]
        if not active:
            break
        items = [
            VerifyInput(s.query, corpus.clip(s.hits[0].video_id, config.sampling), config.prompt_mode)
            for s in active
        ]
        generation = _generate(policy, items, active, config, memo)
        rejected: list[tuple[int, _QueryState]] = []
        for i, state in enumerate(active):
            parsed = parse_response(generation.texts[i])
            shown = state.hits[0].video_id
            label = (shown == state.gt_video) if state.gt_video is not None else None
            record = TurnTrace(
                turn=turn,
                ranking=[h.video_id for h in state.hits],
                scores=[float(h.score) for h in state.hits],
                response=generation.texts[i],
                parsed=parsed,
                label_matched=label,
                response_tokens=len(generation.token_ids[i]),
                decided_matched=_decide(config, parsed, label),
                gt_rank=state.gt_rank,
            )
            record.completion_ids = list(generation.token_ids[i])
            state.trace.turns.append(record)
            state.seen.append(shown)
            if record.decided_matched:
                state.done = True
                state.trace.final_ranking = list(record.ranking)
                state.trace.final_gt_rank = record.gt_rank
            else:
                rejected.append((i, state))
        if progress is not None:
            progress(
                turn, len(active), len(active) if turn == config.max_turns else len(active) - len(rejected)
            )
        if not rejected or (turn == config.max_turns and not config.final_refine):
            break
        _refine(policy, engine, items, generation.token_ids, rejected, config)
        _search(engine, [s for _, s in rejected], config, first=False)
        if turn == config.max_turns:
            for _, state in rejected:
                state.trace.final_ranking = [h.video_id for h in state.hits]
                state.trace.final_gt_rank = state.gt_rank
    for state in states:
        if not state.trace.final_ranking and state.trace.turns:
            state.trace.final_ranking = list(state.trace.turns[-1].ranking)
            state.trace.final_gt_rank = state.trace.turns[-1].gt_rank
    return [s.trace for s in states]


def _refine(policy, engine, items, completions, rejected, config: AgentConfig) -> None:
    """Give every rejected query the embedding of its next search (unchanged when it cannot refine)."""
    if config.refiner is Refiner.SQR:
        refine_id = policy.refine_token_id
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
                originals=torch.stack([s.original for _, s in soft]),
            )
            for (_, state), emb, tok in zip(soft, embeddings, tokens, strict=True):
                state.embedding, state.soft_tokens = emb, tok
                turn = state.trace.turns[-1]
                turn.refinement_tokens = policy.sqr.config.num_latents
                turn.refined_query = emb
    elif config.refiner is Refiner.HQR:
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
                state.trace.turns[-1].refined_query = emb
