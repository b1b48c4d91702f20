"""The policy interface shared by both families: prompts in, hidden states, generation and SQR heads out."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vsr_model.fileio import atomic_directory
from vsr_model.protocol import REFINE_TOKEN, RefinementMode, build_verify_prompt
from vsr_model.sqr import PrefillState, SQRConfig, SQRHeads

POLICY_CONFIG_FILE = "vsr_policy.json"
SQR_HEADS_FILE = "sqr_heads.safetensors"


class ClipLike(Protocol):
    """What the policy needs from a decoded clip (vsr_model.video.VideoClip)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) float64 seconds, true per-frame times
    duration: float


def check_clip(clip: ClipLike) -> None:
    frames, times = np.asarray(clip.frames), np.asarray(clip.timestamps)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"clip frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"clip frames must be uint8, got {frames.dtype}")
    if times.shape != (frames.shape[0],):
        raise ValueError(f"clip timestamps must be ({frames.shape[0]},) seconds, got {times.shape}")
    if not np.isfinite(times).all() or (np.diff(times) < 0).any() or (times < 0).any():
        raise ValueError("clip timestamps must be finite, non-negative and non-decreasing")
    if not math.isfinite(float(clip.duration)) or float(clip.duration) <= 0:
        raise ValueError(f"clip duration must be positive, got {clip.duration!r}")


@dataclass(frozen=True)
class VerifyInput:
    """One verify turn: the query and the clip of the retrieved video."""

    query: str
    clip: ClipLike
    mode: RefinementMode = RefinementMode.SOFT


@dataclass
class PolicyBatch:
    """Left-padded token batch (prompt, optionally followed by a completion) plus model-specific inputs.

    `position_ids` are (B, L) for a plain LM, (3, B, L) for Qwen-VL's multimodal RoPE.
    `completion_mask` marks completion tokens (the SFT/GRPO loss targets); `refine_index` is the
    position of the first <REFINE> in the completion, -1 where there is none.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    completion_mask: torch.Tensor | None = None
    refine_index: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> PolicyBatch:
        move = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
        return PolicyBatch(
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            position_ids=move(self.position_ids),
            model_inputs={k: move(v) for k, v in self.model_inputs.items()},
            completion_mask=move(self.completion_mask),
            refine_index=move(self.refine_index),
        )


@dataclass
class GenerationSettings:
    max_new_tokens: int = 768
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"sampling temperature must be > 0, got {self.temperature}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")


@dataclass
class Generation:
    """Completions of a batch: token ids (without padding or anything after EOS) and their text."""

    token_ids: list[list[int]]
    texts: list[str]


def decode_completions(tokenizer, sequences: torch.Tensor, stop_ids: Sequence[int]) -> Generation:
    """Cut each generated row after its first stop token, drop padding, keep special tokens like <REFINE>."""
    eos = tokenizer.eos_token_id
    token_ids, texts = [], []
    for row in sequences.tolist():
        kept = []
        for t in row:
            kept.append(t)
            if t in stop_ids:
                break
        # The EOS itself is not part of the response text; <REFINE> is. Padding only follows a stop.
        text_ids = kept[:-1] if kept and kept[-1] == eos else kept
        token_ids.append(kept)
        texts.append(tokenizer.decode(text_ids, skip_special_tokens=False))
    return Generation(token_ids=token_ids, texts=texts)


def add_policy_tokens(tokenizer, model, extra_tokens: Sequence[str] = ()) -> None:
    """Add <REFINE> (and `extra_tokens`) to the vocabulary and grow the model's embeddings to match.

    A newly added <REFINE> starts as a copy of the end-of-turn token's input and output embeddings. It
    ends a turn the way EOS does, so the cold-start SFT only has to tell the two apart; a randomly placed
    row would first have to be lifted above every other logit, which a short run does not manage (the
    policy then never emits <REFINE> and SQR never runs). This holds whether the row comes from growing
    the embeddings or from the spare rows a checkpoint pads its vocabulary with. A tokenizer that
    already has <REFINE> (a saved policy being loaded) keeps its trained rows.
    """
    added = [t for t in (REFINE_TOKEN, *extra_tokens) if t not in tokenizer.get_vocab()]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    eos = tokenizer.eos_token_id
    if REFINE_TOKEN not in added or eos is None:
        return
    refine = tokenizer.convert_tokens_to_ids(REFINE_TOKEN)
    with torch.no_grad():
        for table in (model.get_input_embeddings(), model.get_output_embeddings()):
            if table is not None:
                table.weight[refine] = table.weight[eos]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) left-padded, so every row's last real token sits in the last column."""
    if not sequences:
        raise ValueError("empty batch")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"row {i} of the batch is empty")
        ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, width - len(seq) :] = 1
    return ids, mask


@dataclass
class PolicyOutput:
    """Teacher-forced forward: next-token logits (B, L, V) (None when not asked for), last hidden states
    (B, L, H) and the state (hidden + KV cache) that `vsr_model.sqr.latent_rollout(..., state=...)`
    continues from."""

    logits: torch.Tensor | None
    hidden: torch.Tensor
    state: PrefillState


class VideoPolicy(nn.Module):
    """A video LLM that verifies a retrieved video, grounds a moment and emits <REFINE> for SQR.

    Subclasses implement the family-specific parts: rendering the prompt with the video, embedding
    the inputs, running the decoder with explicit positions and a KV cache, generating, saving.
    """

    family: str = ""
    sqr: SQRHeads

    # --- family-specific ---
    @property
    def tokenizer(self): ...

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The language model's compute dtype (SQR heads may keep their own)."""
        return self.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prompt_tokens(self, item: VerifyInput) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Prompt token ids (chat-formatted, video rendered) and this item's model inputs."""
        raise NotImplementedError

    def _collate(
        self, ids: torch.Tensor, mask: torch.Tensor, per_item: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Position ids and batched model inputs for a left-padded batch."""
        raise NotImplementedError

    def embed_inputs(self, batch: PolicyBatch) -> torch.Tensor:
        raise NotImplementedError

    def run_backbone(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: object | None = None,
        batch: PolicyBatch | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, object | None]:
        """Last-layer hidden states (B, L, H) and the cache. `batch` carries visual inputs on a prefill."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, batch: PolicyBatch, settings: GenerationSettings) -> Generation:
        raise NotImplementedError

    def _save_backbone(self, directory: Path) -> None:
        raise NotImplementedError

    # --- shared ---
    def forward(self, batch: PolicyBatch, use_cache: bool = True, logits: bool = True) -> PolicyOutput:
        """One forward over prompt + completion; SFT's CE, GRPO's log-probs and the SQR rollout share it.
        `logits=False` skips the LM head over every position (see `completion_logits`)."""
        hidden, cache = self.run_backbone(
            self.embed_inputs(batch),
            batch.attention_mask,
            batch.position_ids,
            batch=batch,
            use_cache=use_cache,
        )
        return PolicyOutput(
            logits=self.logits(hidden) if logits else None, hidden=hidden, state=PrefillState(hidden, cache)
        )

    def completion_logits(
        self, hidden: torch.Tensor, batch: PolicyBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits (N, V) of the batch's N completion tokens, each from the position before it,
        and those tokens' ids (N,): the LM head runs on the completion only, not on the prompt's
        hundreds of video and text positions."""
        if batch.completion_mask is None:
            raise ValueError("the batch has no completion to score")
        mask = batch.completion_mask[:, 1:].to(hidden.device)
        return self.logits(hidden[:, :-1][mask]), batch.input_ids[:, 1:].to(hidden.device)[mask]

    @property
    def refine_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(REFINE_TOKEN)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{REFINE_TOKEN} is not in the policy's vocabulary")
        return int(token_id)

    @property
    def stop_token_ids(self) -> list[int]:
        # <REFINE> is always the last token of a response: generation stops there as at EOS.
        return [self.tokenizer.eos_token_id, self.refine_token_id]

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Tokens generation must never produce: placeholders that stand for video frames in a prompt
        (a response holding one could not be encoded again for SQR or the GRPO loss)."""
        return []

    def generation_kwargs(self, settings: GenerationSettings) -> dict:
        """Sampling and stopping arguments of Hugging Face `generate`, the same for every family."""
        suppressed = self.suppressed_token_ids
        return {
            **({"suppress_tokens": suppressed} if suppressed else {}),
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "temperature": settings.temperature if settings.do_sample else None,
            "top_p": settings.top_p if settings.do_sample else None,
            "num_return_sequences": settings.num_return_sequences,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def text_position_ids(self, start: torch.Tensor, length: int) -> torch.Tensor:
        """Positions of `length` text tokens starting at `start` (B,): (B, length) for a plain LM."""
        return start[:, None] + torch.arange(length, device=start.device)[None, :]

    def next_text_position(self, position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B,) position right after token `index` of each row."""
        rows = torch.arange(index.shape[0], device=index.device)
        if position_ids.ndim == 3:
            return position_ids[:, rows, index].max(dim=0).values + 1
        return position_ids[rows, index] + 1

    def encode(
        self,
        items: Sequence[VerifyInput],
        completions: Sequence[Sequence[int] | str] | None = None,
    ) -> PolicyBatch:
        """Tokenise prompts (and optional completions, as token ids or text) into a left-padded batch.

        Text completions go through `completion_ids`, so a target ends as generation would end.
        """
        if not items:
            raise ValueError("empty batch of verify inputs")
        if completions is not None and len(completions) != len(items):
            raise ValueError(f"{len(completions)} completions for {len(items)} prompts")
        sequences, per_item, completion_spans = [], [], []
        for i, item in enumerate(items):
            check_clip(item.clip)
            prompt_ids, inputs = self._prompt_tokens(item)
            completion: list[int] = []
            if completions is not None:
                raw = completions[i]
                completion = (
                    self.tokenizer.encode(raw, add_special_tokens=False)
                    if isinstance(raw, str)
                    else list(raw)
                )
                vocab = self.vocab_size
                bad = [t for t in completion if not 0 <= int(t) < vocab]
                if bad:
                    raise ValueError(
                        f"completion {i} has token ids outside the vocabulary (size {vocab}): {bad[:5]}"
                    )
            sequences.append(prompt_ids + completion)
            per_item.append(inputs)
            completion_spans.append(len(completion))
        pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        ids, mask = left_pad(sequences, pad_id)
        position_ids, model_inputs = self._collate(ids, mask, per_item)
        completion_mask = torch.zeros_like(mask, dtype=torch.bool)
        refine_index = torch.full((len(items),), -1, dtype=torch.long)
        refine_id = self.refine_token_id
        for i, n in enumerate(completion_spans):
            if n:
                completion_mask[i, -n:] = True
                hits = (ids[i, -n:] == refine_id).nonzero().flatten()
                if len(hits):
                    refine_index[i] = ids.shape[1] - n + int(hits[0])
        return PolicyBatch(ids, mask, position_ids, model_inputs, completion_mask, refine_index)

    def completion_ids(self, text: str) -> list[int]:
        """Token ids of a target response, ending the way generation ends: at <REFINE> or with EOS."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids or ids[-1] not in (self.refine_token_id, self.tokenizer.eos_token_id):
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @property
    def vocab_size(self) -> int:
        # The module's own count, not weight.shape: a ZeRO-3 partitioned weight has no rows locally.
        return int(self.get_input_embeddings().num_embeddings)

    def get_input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    # The prompt's layout (vsr_model.protocol.build_verify_prompt); families with a config override these.
    prompt_style: str = "full"
    query_first: bool = True

    def render_prompt_text(self, item: VerifyInput, video_text: str) -> str:
        """Chat-formatted prompt with the family's video rendering in the middle of the user turn."""
        prompt = build_verify_prompt(
            item.query, float(item.clip.duration), item.mode, self.prompt_style, self.query_first
        )
        messages = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.before_video + video_text + prompt.after_video},
        ]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        raise ValueError("the policy's tokenizer has no chat template; set one before building prompts")

    def policy_config(self) -> dict:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save backbone (HF format), tokenizer, SQR heads and the policy config, atomically."""
        with atomic_directory(directory) as staging:
            self._save_backbone(staging)
            self.tokenizer.save_pretrained(staging)
            state = {k: v.detach().contiguous().cpu() for k, v in self.sqr.state_dict().items()}
            save_file(state, staging / SQR_HEADS_FILE)
            config = {"family": self.family, **self.policy_config(), "sqr": self.sqr.config.to_dict()}
            (staging / POLICY_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_sqr_heads(directory: Path, hidden_size: int, config: SQRConfig) -> SQRHeads:
    heads = SQRHeads(hidden_size, config)
    path = directory / SQR_HEADS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a complete vsr policy checkpoint")
    state = load_file(str(path))
    missing, unexpected = heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"SQR heads in {path} do not fit the config: missing {missing}, unexpected {unexpected}"
        )
    return heads


def read_policy_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / POLICY_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a vsr policy checkpoint")
    return json.loads(path.read_text())
