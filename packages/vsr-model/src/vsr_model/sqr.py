"""Soft Query Refinement: the three projectors, the latent rollout, the refined query and InfoNCE.

The one implementation used by SFT, GRPO and evaluation.

- readout  (H -> D): Linear -> LayerNorm -> GELU -> Linear, last layer zero-initialised, so training
  starts from a refinement that leaves the query untouched.
- roll-in  (D -> H): LayerNorm -> Linear, partial identity; feeds a latent back into the policy.
- append   (D -> H_e): LayerNorm -> Linear, partial identity; turns a latent into a soft token of the
  search engine's text encoder.

z1 = readout(h_REFINE); z_k = readout(hidden at the last of rollin(z1..z_{k-1}) inserted after
<REFINE>). `latent_rollout` keeps the policy's KV cache, so each extra latent costs one
single-position decode step; `latent_rollout_reforward` re-runs the whole sequence per step (the
authors' way) and exists as the reference the cached version is tested against.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from vsr_model.config import config_from_dict

if TYPE_CHECKING:
    from vsr_model.policy.base import PolicyBatch, VideoPolicy

logger = logging.getLogger(__name__)


APPEND_MODES = ("residual", "plain")


@dataclass
class SQRConfig:
    """SQR settings, saved with the policy. `embed_dim` (D) and `query_input_dim` (H_e) come from the
    search engine; `num_latents` is N. The retrieval objective's settings are training settings
    (InfoNCEConfig); whether soft tokens accumulate across turns is an agent setting
    (vsr_model.agent.AgentConfig).

    `append_mode` says how the soft tokens change the query embedding:
      residual  q' = normalise(q + E(text; s) - E(text; 0)): q is the original query's embedding, E(text; s)
                the engine's embedding with the soft tokens s appended and E(text; 0) with as many zero
                vectors appended. The readout's last layer starts at zero, so s = 0 and q' = q exactly
                before any training, in every engine family, while gradients reach every SQR weight from
                the first step. (Appending even zero vectors to a mean-pooled BERT-style encoder moves
                the query: cosine 0.42 in the default engine, so a plain append starts from a damaged
                query and spends its training repairing it.)
      plain     q' = E(text; s), the paper's plain append.
    """

    embed_dim: int
    query_input_dim: int
    num_latents: int = 8
    append_mode: str = "residual"

    def __post_init__(self) -> None:
        if self.append_mode not in APPEND_MODES:
            raise ValueError(f"SQR append_mode must be one of {APPEND_MODES}, got {self.append_mode!r}")
        for name in ("embed_dim", "query_input_dim", "num_latents"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SQR {name} must be a positive integer, got {value!r}")

    @classmethod
    def from_saved(cls, values: dict) -> SQRConfig:
        """The config of a saved policy. Policies saved before `append_mode` existed were trained with
        the plain append, so that is what a missing key means there; the InfoNCE settings they carried
        are training settings now (InfoNCEConfig) and are dropped."""
        kept = {k: v for k, v in values.items() if k not in _TRAINING_KEYS}
        return config_from_dict(cls, {"append_mode": "plain", **kept}, "saved SQR config")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Keys older saved SQR configs carried that belong to InfoNCEConfig.
_TRAINING_KEYS = ("temperature", "num_negatives", "infonce_weight", "ambiguity_threshold")


@dataclass
class InfoNCEConfig:
    """The retrieval objective of the refined query (Stage 1's auxiliary loss, Stage 2's retrieval reward
    and optional SQR-head loss): `weight` (lambda), `temperature` (tau), `num_negatives` (the wrongly
    shown video, the engine's hard negatives, random fill; paper: 24), `ambiguity_threshold` (drop
    candidate negatives whose video embedding has at least this cosine with the ground truth's: they
    likely show the moment too; None keeps every candidate)."""

    weight: float = 0.3
    temperature: float = 0.1
    num_negatives: int = 24
    ambiguity_threshold: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"InfoNCE weight must be >= 0, got {self.weight}")
        if not self.temperature > 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {self.temperature}")
        if self.num_negatives < 1:
            raise ValueError(f"InfoNCE num_negatives must be >= 1, got {self.num_negatives}")
        if self.ambiguity_threshold is not None and not -1.0 <= self.ambiguity_threshold <= 1.0:
            raise ValueError(f"ambiguity_threshold is a cosine in [-1, 1], got {self.ambiguity_threshold}")

    def validate(self, where: str) -> None:
        """Checked at construction; the strict config loader calls this hook on every section."""


def _partial_identity_(linear: nn.Linear) -> None:
    """W[i, i] = 1 for i < min(in, out), zero elsewhere, zero bias: passes the shared coordinates through."""
    with torch.no_grad():
        linear.weight.zero_()
        n = min(linear.in_features, linear.out_features)
        linear.weight[torch.arange(n), torch.arange(n)] = 1.0
        if linear.bias is not None:
            linear.bias.zero_()


class Readout(nn.Module):
    def __init__(self, hidden_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.act = nn.GELU()
        self.out = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.norm(self.proj(hidden))))


class NormLinear(nn.Module):
    """LayerNorm(in) -> Linear(in -> out), the Linear initialised as a partial identity."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        _partial_identity_(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class SQRHeads(nn.Module):
    """readout (H -> D), rollin (D -> H), append (D -> H_e); every width from configs."""

    def __init__(self, hidden_size: int, config: SQRConfig) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"policy hidden size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size
        self.config = config
        self.readout = Readout(hidden_size, config.embed_dim)
        self.rollin = NormLinear(config.embed_dim, hidden_size)
        self.append = NormLinear(config.embed_dim, config.query_input_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.readout.proj.weight.dtype

    def read(self, hidden: torch.Tensor) -> torch.Tensor:
        """readout in the heads' own precision (the policy may run in bf16 while the heads do not)."""
        return self.readout(hidden.to(self.dtype))


@dataclass
class RolloutResult:
    latents: torch.Tensor  # (B, N, D)
    refine_hidden: torch.Tensor  # (B, H), the policy's hidden state at <REFINE>


@dataclass
class PrefillState:
    """A forward over a batch, kept for a rollout: hidden states (B, L, H) and the KV cache."""

    hidden: torch.Tensor
    cache: object


def _check_refine(batch: PolicyBatch, skip_missing: bool = False) -> torch.Tensor:
    refine_index = batch.refine_index
    if skip_missing and refine_index is not None:
        # Rows without <REFINE> roll out from their last token; the caller drops their latents.
        last = torch.full_like(refine_index, batch.input_ids.shape[1] - 1)
        return torch.where(refine_index < 0, last, refine_index)
    if refine_index is None or bool((refine_index < 0).any()):
        missing = [] if refine_index is None else (refine_index < 0).nonzero().flatten().tolist()
        raise ValueError(
            f"latent rollout needs a <REFINE> token in every sequence; missing in rows {missing}"
        )
    return refine_index


def _mask_after_refine(batch: PolicyBatch, skip_missing: bool = False) -> torch.Tensor:
    """Attention mask with every token after <REFINE> hidden, so latents attend exactly to the prefix."""
    refine_index = _check_refine(batch, skip_missing)
    positions = torch.arange(batch.attention_mask.shape[1], device=batch.attention_mask.device)
    return batch.attention_mask * (positions[None, :] <= refine_index[:, None]).to(batch.attention_mask.dtype)


def prefill(policy: VideoPolicy, batch: PolicyBatch) -> PrefillState:
    """One forward over the whole batch with the cache kept; SFT reuses it for the CE loss and the rollout."""
    hidden, cache = policy.run_backbone(
        policy.embed_inputs(batch), batch.attention_mask, batch.position_ids, batch=batch, use_cache=True
    )
    return PrefillState(hidden=hidden, cache=cache)


def _cached_length(cache: object) -> int | None:
    get_length = getattr(cache, "get_seq_length", None)
    return int(get_length()) if get_length is not None else None


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0], device=x.device), index]


def latent_rollout(
    policy: VideoPolicy,
    batch: PolicyBatch,
    num_latents: int | None = None,
    state: PrefillState | None = None,
    skip_missing: bool = False,
) -> RolloutResult:
    """N latents with the KV cache: one prefill (or the given one), then N-1 single-position steps.

    `state` may come from a forward over tokens beyond <REFINE> (SFT's teacher-forced targets); those
    tokens stay in the cache but are masked out, which equals truncating each row at <REFINE>.
    The cache in `state` is extended in place. A row without <REFINE> is an error, unless
    `skip_missing`: it then rolls out from its last token and its latents mean nothing (drop them).
    """
    heads = policy.sqr
    n = num_latents or heads.config.num_latents
    if n < 1:
        raise ValueError(f"num_latents must be >= 1, got {n}")
    refine_index = _check_refine(batch, skip_missing)
    if state is None:
        state = prefill(policy, batch)
    if _cached_length(state.cache) != batch.input_ids.shape[1]:
        # Gradient checkpointing in training mode keeps layers from writing the cache; decoding on an
        # empty cache would silently drop the prefix, so take the exact (slower) re-forward path.
        logger.warning(
            "no complete KV cache (gradient checkpointing?): SQR rollout falls back to re-forwarding"
        )
        return latent_rollout_reforward(policy, batch, n, skip_missing)
    mask = _mask_after_refine(batch, skip_missing)
    refine_hidden = _gather_rows(state.hidden, refine_index)
    latents = [heads.read(refine_hidden)]
    next_position = policy.next_text_position(batch.position_ids, refine_index)
    cache = state.cache
    for _ in range(n - 1):
        step_embeds = heads.rollin(latents[-1]).unsqueeze(1).to(policy.dtype)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        hidden, cache = policy.run_backbone(
            step_embeds, mask, policy.text_position_ids(next_position, 1), cache=cache, use_cache=True
        )
        next_position = next_position + 1
        latents.append(heads.read(hidden[:, -1]))
    return RolloutResult(latents=torch.stack(latents, dim=1), refine_hidden=refine_hidden)


def latent_rollout_reforward(
    policy: VideoPolicy, batch: PolicyBatch, num_latents: int | None = None, skip_missing: bool = False
) -> RolloutResult:
    """Reference rollout without a cache: the full sequence plus all rolled-in latents, re-run per latent."""
    heads = policy.sqr
    n = num_latents or heads.config.num_latents
    refine_index = _check_refine(batch, skip_missing)
    mask = _mask_after_refine(batch, skip_missing)
    prompt_embeds = policy.embed_inputs(batch)
    start = policy.next_text_position(batch.position_ids, refine_index)
    hidden, _ = policy.run_backbone(prompt_embeds, mask, batch.position_ids, batch=batch)
    refine_hidden = _gather_rows(hidden, refine_index)
    latents = [heads.read(refine_hidden)]
    for k in range(1, n):
        rolled = heads.rollin(torch.stack(latents, dim=1)).to(policy.dtype)
        embeds = torch.cat([prompt_embeds, rolled], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], k)], dim=1)
        positions = torch.cat([batch.position_ids, policy.text_position_ids(start, k)], dim=-1)
        hidden, _ = policy.run_backbone(embeds, full_mask, positions, batch=batch)
        latents.append(heads.read(hidden[:, -1]))
    return RolloutResult(latents=torch.stack(latents, dim=1), refine_hidden=refine_hidden)


class QueryEncoder(Protocol):
    """The part of the search engine SQR needs."""

    embed_dim: int
    query_input_dim: int

    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor: ...


def soft_tokens(heads: SQRHeads, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, N, D) -> the engine's soft tokens (B, N, H_e)."""
    if latents.ndim != 3 or latents.shape[-1] != heads.config.embed_dim:
        raise ValueError(f"latents must be (B, N, {heads.config.embed_dim}), got {tuple(latents.shape)}")
    return heads.append(latents.to(heads.dtype))


def check_engine_dims(heads: SQRHeads, engine: QueryEncoder) -> None:
    if engine.embed_dim != heads.config.embed_dim or engine.query_input_dim != heads.config.query_input_dim:
        raise ValueError(
            f"SQR heads were built for an engine with D={heads.config.embed_dim}, H_e={heads.config.query_input_dim}; "
            f"this engine has D={engine.embed_dim}, H_e={engine.query_input_dim}"
        )


def refined_query(
    heads: SQRHeads,
    engine: QueryEncoder,
    texts: Sequence[str],
    latents: torch.Tensor,
    previous_soft_tokens: torch.Tensor | None = None,
    original: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the refined queries: (B, D) L2-normalised embeddings and the soft tokens used (B, M, H_e).

    With `previous_soft_tokens` (accumulate mode) this turn's tokens are appended after the earlier
    turns' ones, i.e. q_{t+1} = [q_t ; soft tokens]. In residual mode (SQRConfig.append_mode) the
    change the tokens make is added to the original query's embedding: `original` (B, D) when the
    caller has it (the agent does), else encoded here.
    """
    check_engine_dims(heads, engine)
    if len(texts) != latents.shape[0]:
        raise ValueError(f"{len(texts)} query texts for {latents.shape[0]} rows of latents")
    tokens = soft_tokens(heads, latents)
    if previous_soft_tokens is not None:
        if (
            previous_soft_tokens.shape[0] != tokens.shape[0]
            or previous_soft_tokens.shape[2] != tokens.shape[2]
        ):
            raise ValueError(
                f"previous soft tokens {tuple(previous_soft_tokens.shape)} do not fit new ones {tuple(tokens.shape)}"
            )
        tokens = torch.cat([previous_soft_tokens.to(tokens), tokens], dim=1)
    embedding = engine.encode_query(list(texts), soft_tokens=tokens)
    if embedding.shape != (len(texts), heads.config.embed_dim):
        raise ValueError(
            f"engine returned query embeddings {tuple(embedding.shape)}, expected ({len(texts)}, D)"
        )
    if heads.config.append_mode == "residual":
        with torch.no_grad():
            if original is None:
                original = engine.encode_query(list(texts))
            zero = engine.encode_query(list(texts), soft_tokens=torch.zeros_like(tokens).detach())
        if original.shape != embedding.shape:
            raise ValueError(
                f"original query embeddings {tuple(original.shape)} do not match the refined ones {tuple(embedding.shape)}"
            )
        embedding = residual_refinement(original.to(embedding), embedding, zero.to(embedding))
    return embedding, tokens


def residual_refinement(original: torch.Tensor, appended: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """normalise(q + E(text; s) - E(text; 0)): exactly the original query while the soft tokens are 0."""
    return nn.functional.normalize(original + (appended - zero), dim=-1)


def contrastive_logits(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(B, 1 + n) cosine / tau, the positive in column 0; query/positive (B, D), negatives (B, n, D)."""
    if query.ndim != 2 or positive.shape != query.shape:
        raise ValueError(
            f"query and positive must both be (B, D); got {tuple(query.shape)} and {tuple(positive.shape)}"
        )
    if negatives.ndim != 3 or negatives.shape[0] != query.shape[0] or negatives.shape[2] != query.shape[1]:
        raise ValueError(
            f"negatives must be (B, n, D) matching query {tuple(query.shape)}; got {tuple(negatives.shape)}"
        )
    q = nn.functional.normalize(query.float(), dim=-1)
    candidates = nn.functional.normalize(torch.cat([positive.unsqueeze(1), negatives], dim=1).float(), dim=-1)
    logits = torch.einsum("bd,bnd->bn", q, candidates) / temperature
    if not torch.isfinite(logits).all():
        raise ValueError("non-finite similarity between query and videos (NaN or inf embeddings)")
    return logits


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE of the refined query against [ground-truth video, negatives] at temperature tau."""
    logits = contrastive_logits(query, positive, negatives, temperature)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits, target, reduction=reduction)


@dataclass
class NegativeSampler:
    """Chooses InfoNCE negatives per query: the wrongly retrieved top-1, then hard negatives, then random.

    `video_ids` is the pool for random fill. With `ambiguity_threshold`, candidates whose video
    embedding has cosine >= threshold with the positive's are dropped (likely to show the moment too).
    `embed_videos` maps ids to (n, D) embeddings (the engine's `video_embeddings`).
    """

    video_ids: Sequence[str]
    num_negatives: int
    embed_videos: Callable[[Sequence[str]], torch.Tensor]
    ambiguity_threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        unique = list(dict.fromkeys(self.video_ids))
        if len(unique) < self.num_negatives + 1:
            raise ValueError(
                f"need at least {self.num_negatives + 1} distinct videos for {self.num_negatives} negatives, "
                f"the pool has {len(unique)}"
            )
        self._pool = unique
        self._rng = random.Random(self.seed)

    def _ambiguous(self, positive: str, candidates: list[str]) -> set[str]:
        if self.ambiguity_threshold is None or not candidates:
            return set()
        emb = nn.functional.normalize(self.embed_videos([positive, *candidates]).float(), dim=-1)
        cos = emb[1:] @ emb[0]
        return {c for c, s in zip(candidates, cos.tolist(), strict=True) if s >= self.ambiguity_threshold}

    def sample_ids(
        self,
        positives: Sequence[str],
        retrieved_top1: Sequence[str | None],
        hard_negatives: Sequence[Sequence[str]] | None = None,
    ) -> list[list[str]]:
        if len(retrieved_top1) != len(positives):
            raise ValueError(f"{len(retrieved_top1)} retrieved videos for {len(positives)} positives")
        if hard_negatives is not None and len(hard_negatives) != len(positives):
            raise ValueError(f"{len(hard_negatives)} hard-negative lists for {len(positives)} positives")
        out = []
        for i, positive in enumerate(positives):
            preferred = [retrieved_top1[i]] if retrieved_top1[i] is not None else []
            preferred += list(hard_negatives[i]) if hard_negatives is not None else []
            preferred = [v for v in dict.fromkeys(preferred) if v != positive]
            dropped = self._ambiguous(positive, preferred)
            chosen = [v for v in preferred if v not in dropped][: self.num_negatives]
            taken = {positive, *chosen, *dropped}
            attempts = 0
            while len(chosen) < self.num_negatives:
                candidate = self._pool[self._rng.randrange(len(self._pool))]
                attempts += 1
                if candidate in taken:
                    if attempts > 50 * len(self._pool):
                        raise ValueError(
                            f"cannot find {self.num_negatives} unambiguous negatives for {positive!r}"
                        )
                    continue
                taken.add(candidate)
                if candidate in self._ambiguous(positive, [candidate]):
                    continue
                chosen.append(candidate)
            out.append(chosen)
        return out

    def sample(
        self,
        positives: Sequence[str],
        retrieved_top1: Sequence[str | None],
        hard_negatives: Sequence[Sequence[str]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """(positive embeddings (B, D), negative embeddings (B, n, D), negative ids)."""
        ids = self.sample_ids(positives, retrieved_top1, hard_negatives)
        positive_emb = self.embed_videos(list(positives))
        flat = [v for row in ids for v in row]
        negative_emb = self.embed_videos(flat).reshape(len(positives), self.num_negatives, -1)
        return positive_emb, negative_emb, ids
