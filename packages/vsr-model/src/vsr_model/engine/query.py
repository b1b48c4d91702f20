"""Query-side encoding with Soft Query Refinement tokens spliced into the text encoder's input.

Each query is laid out as  prefix + content + [N soft tokens] + suffix  (then right padding):
prefix/suffix are the encoder's special tokens ([CLS] / [SEP] for BERT) or an instruction template
(decoder embedders); the soft tokens go right after the query's content, before end/pad tokens, and
the attention mask covers them. The same function serves both engine families.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PADDING_SIDES = ("right", "left")


@dataclass
class SplicedBatch:
    input_ids: torch.Tensor  # (B, L) token ids; pad ids where soft tokens sit
    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long
    last_index: torch.Tensor  # (B,) index of each row's last real token (for last-token pooling)
    soft_positions: torch.Tensor  # (B, N) where the soft tokens sit (empty (B, 0) without them)


def check_soft_tokens(soft_tokens: torch.Tensor | None, batch: int, width: int) -> int:
    """Validate (B, N, H_e) soft tokens; return N (0 when None)."""
    if soft_tokens is None:
        return 0
    if not isinstance(soft_tokens, torch.Tensor) or not soft_tokens.is_floating_point():
        raise TypeError("soft_tokens must be a floating-point tensor of shape (B, N, H_e)")
    if soft_tokens.ndim != 3 or soft_tokens.shape[0] != batch or soft_tokens.shape[2] != width:
        raise ValueError(f"soft_tokens must have shape ({batch}, N, {width}), got {tuple(soft_tokens.shape)}")
    if not torch.isfinite(soft_tokens).all():
        raise ValueError("soft_tokens contain NaN or infinity")
    return int(soft_tokens.shape[1])


def pad_token_rows(
    rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, index of each row's last real token) of rows padded on one side."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("cannot pad an empty batch or an empty row")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    last = torch.empty(len(rows), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0 if padding_side == "right" else width - len(row)
        ids[b, start : start + len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, start : start + len(row)] = 1
        last[b] = start + len(row) - 1
    return ids, mask, last


def splice_soft_tokens(
    embedding: nn.Module,
    prefix: Sequence[int],
    contents: Sequence[Sequence[int]],
    suffix: Sequence[int],
    pad_id: int,
    soft_tokens: torch.Tensor | None,
    max_length: int,
    padding_side: str = "right",
) -> SplicedBatch:
    """Build input embeddings for prefix + content + soft + suffix, padded on `padding_side`.

    Content is truncated so every row fits in max_length (prefix, suffix and soft tokens are kept).
    Gradients flow from the result into `soft_tokens`.
    """
    weight = embedding.weight
    batch = len(contents)
    if batch == 0:
        raise ValueError("no queries to encode")
    n_soft = check_soft_tokens(soft_tokens, batch, weight.shape[1])
    budget = max_length - len(prefix) - len(suffix) - n_soft
    if budget < 1:
        raise ValueError(
            f"max_length {max_length} leaves no room for query text ({len(prefix)} prefix, {len(suffix)} suffix, {n_soft} soft tokens)"
        )
    rows, soft_offsets = [], []
    for content in contents:
        content = list(content)[:budget]
        if not content:
            raise ValueError("a query tokenised to no content tokens")
        soft_offsets.append(len(prefix) + len(content))
        rows.append(list(prefix) + content + [pad_id] * n_soft + list(suffix))
    ids, mask, last = pad_token_rows(rows, pad_id, padding_side)
    device = weight.device
    ids, mask, last = ids.to(device), mask.to(device), last.to(device)
    embeds = embedding(ids)
    # a row's soft tokens start right after its content, counted from the row's first real token
    starts = torch.tensor(soft_offsets, device=device) + (last + 1 - mask.sum(1))
    positions = starts[:, None] + torch.arange(n_soft, device=device)[None, :]
    if n_soft:
        b_idx = torch.arange(batch, device=device).repeat_interleave(n_soft)
        values = soft_tokens.to(device=device, dtype=embeds.dtype).reshape(batch * n_soft, -1)
        embeds = embeds.index_put((b_idx, positions.reshape(-1)), values)
    return SplicedBatch(ids, embeds, mask, last, positions)


def special_token_frame(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special tokens the tokenizer wraps around a single sequence."""
    probe = "query"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    wrapped = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for at in range(len(wrapped) - len(bare) + 1):
        if wrapped[at : at + len(bare)] == bare:
            return wrapped[:at], wrapped[at + len(bare) :]
    raise ValueError(
        f"cannot locate the text inside the tokenizer's special-token frame: {wrapped} vs {bare}"
    )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def last_token_pool(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


class BertQueryEncoder(nn.Module):
    """Frozen bidirectional text encoder (BERT / MiniLM), mean pooling over all real tokens."""

    def __init__(self, tokenizer, model: nn.Module, max_length: int = 64):
        super().__init__()
        self.tokenizer, self.model, self.max_length = tokenizer, model, int(max_length)
        self.prefix, self.suffix = special_token_frame(tokenizer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("queries must be a sequence of non-empty strings")
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def forward(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor:
        batch = splice_soft_tokens(
            self.model.get_input_embeddings(), self.prefix, self.tokenize(texts), self.suffix,
            self.tokenizer.pad_token_id, soft_tokens, self.max_length,
        )  # fmt: skip
        hidden = self.model(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask
        ).last_hidden_state
        return F.normalize(mean_pool(hidden, batch.attention_mask).float(), dim=-1)
