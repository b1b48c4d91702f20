"""Family 1: an HF embedding VLM (Qwen3-VL-Embedding style; Qwen3-VL and Qwen2.5-VL checkpoints).

One frozen model embeds both sides. Every input is a chat turn whose system message is the
instruction ("Represent the user's input." by default) and whose user message is the query text or
the video; the embedding is the final hidden state of the last token (the end of the assistant
header), L2-normalised:

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n

A video is its sampled frames with their true timestamps, shown the way the policy shows them
(`vsr_model.policy.qwen_vl.QwenVideoInputs`). SQR soft tokens are spliced into the query's input
embeddings right after its content tokens, before `<|im_end|>`, so the pooled last token attends to them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vsr_model.config import config_from_dict
from vsr_model.engine.base import SearchEngine, register_family
from vsr_model.engine.query import (
    PADDING_SIDES,
    SplicedBatch,
    last_token_pool,
    pad_token_rows,
    splice_soft_tokens,
)
from vsr_model.fileio import atomic_directory
from vsr_model.policy.base import check_clip
from vsr_model.policy.qwen_vl import (
    QwenVideoInputs,
    QwenVisionSettings,
    qwen_model_class,
    read_normalisation,
)
from vsr_model.video import FrameSampling, VideoClip

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Represent the user's input."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
MODEL_FOLDER = "model"


@dataclass
class VLMEmbeddingConfig(QwenVisionSettings):
    """`model`: HF name or local path of the checkpoint (loaded on build and on every load of a saved
    engine); None for a model object handed to the constructor, whose weights are then saved with
    the engine. `store_weights` copies a named checkpoint into the engine folder as well (machines
    without a hub). `video_instruction` None uses `instruction` for videos too. `max_length` caps a
    query's tokens (prompt, content and soft tokens; content is truncated to fit). Pixel budget,
    normalisation and dtype: QwenVisionSettings."""

    model: str | None = "Qwen/Qwen3-VL-Embedding-2B"
    instruction: str = DEFAULT_INSTRUCTION
    video_instruction: str | None = None
    max_length: int = 512
    padding_side: str = "right"
    sampling: FrameSampling = field(default_factory=lambda: FrameSampling(fps=1.0, max_frames=64))
    metric: str = "cosine"
    store_weights: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sampling, dict):
            self.sampling = config_from_dict(FrameSampling, self.sampling)
        if not self.instruction.strip() or (
            self.video_instruction is not None and not self.video_instruction.strip()
        ):
            raise ValueError("VLMEmbeddingConfig: instructions must be non-empty text")
        if self.max_length < 8:
            raise ValueError(f"VLMEmbeddingConfig.max_length must be >= 8, got {self.max_length}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"VLMEmbeddingConfig.padding_side must be one of {PADDING_SIDES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_checkpoint(location: str | Path, dtype: str):
    """(bare Qwen-VL model, tokenizer) from an HF name or folder; the LM head is not loaded."""
    from transformers import AutoConfig, AutoTokenizer

    model_type = AutoConfig.from_pretrained(location).model_type
    model = qwen_model_class(model_type, lm_head=False).from_pretrained(location, dtype=getattr(torch, dtype))
    return model, AutoTokenizer.from_pretrained(location)


@register_family
class VLMEmbeddingEngine(SearchEngine):
    family = "vlm_embedding"

    def __init__(self, config: VLMEmbeddingConfig | None = None, *, model=None, tokenizer=None):
        """Load `config.model`, or wrap a given bare Qwen-VL model (Qwen3VLModel / Qwen2_5_VLModel,
        or a ...ForConditionalGeneration, whose inner model is used) and its tokenizer."""
        self.config = config or VLMEmbeddingConfig()
        if model is None:
            if not self.config.model:
                raise ValueError("VLMEmbeddingConfig.model is empty: give a checkpoint name/path or a model")
            model, tokenizer = load_checkpoint(self.config.model, self.config.dtype)
        elif tokenizer is None:
            raise ValueError("a model object needs its tokenizer")
        if hasattr(model, "lm_head") and hasattr(model, "model"):
            model = model.model  # the embedder pools hidden states; the LM head is never used
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.sampling = self.config.sampling
        text_config = model.config.get_text_config()
        super().__init__(
            embed_dim=int(text_config.hidden_size),
            query_input_dim=int(self.model.get_input_embeddings().weight.shape[1]),
            metric=self.config.metric,
        )
        cfg = self.config
        if cfg.image_mean is None or cfg.image_std is None:  # resolved once, then saved with the config
            mean, std = read_normalisation(cfg.model, model.config.model_type)
            cfg.image_mean, cfg.image_std = cfg.image_mean or tuple(mean), cfg.image_std or tuple(std)
        self.vision = QwenVideoInputs(
            model.config, tokenizer, cfg.min_pixels, cfg.max_pixels, cfg.image_mean, cfg.image_std
        )
        for token in (IM_START, IM_END):
            if token not in tokenizer.get_vocab():
                raise ValueError(f"the tokenizer has no {token} token; a Qwen chat tokenizer is needed")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        self.query_prefix = self._encode(chat_prefix(cfg.instruction))
        self.video_prefix = self._encode(chat_prefix(cfg.video_instruction or cfg.instruction))
        self.suffix = self._encode(CHAT_SUFFIX)

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> VLMEmbeddingEngine:
        return cls(config_from_dict(VLMEmbeddingConfig, values, "vlm_embedding engine"))

    # --- helpers ------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def to(self, device: str | torch.device) -> VLMEmbeddingEngine:
        self.model.to(device)
        return self

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str) or not texts:
            raise ValueError("queries must be a non-empty sequence of strings")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("every query must be a non-empty string")
        return [self._encode(t) for t in texts]

    def splice_queries(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> SplicedBatch:
        """The query batch as the LM sees it: prompt + content + soft tokens + chat suffix, padded."""
        return splice_soft_tokens(
            self.model.get_input_embeddings(), self.query_prefix, self.tokenize(texts), self.suffix,
            self.pad_id, soft_tokens, self.config.max_length, self.config.padding_side,
        )  # fmt: skip

    def _pooled(self, batch: SplicedBatch, per_item: list[dict] | None = None) -> torch.Tensor:
        position_ids, inputs = self.vision.collate(
            self.model, batch.input_ids.cpu(), batch.attention_mask.cpu(), per_item
        )
        visual = {}
        if per_item:
            visual = {
                "pixel_values_videos": inputs["pixel_values_videos"].to(self.device, self.dtype),
                "video_grid_thw": inputs["video_grid_thw"].to(self.device),
            }
        hidden = self.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=position_ids.to(self.device),
            use_cache=False,
            **visual,
        ).last_hidden_state
        pooled = last_token_pool(hidden, batch.last_index).float()
        if not torch.isfinite(pooled).all():
            raise FloatingPointError("the embedding model produced a non-finite hidden state")
        return F.normalize(pooled, dim=-1)

    # --- the SearchEngine interface -----------------------------------------------------------------
    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) float32, L2-normalised; soft_tokens (B, N, H_e) go right after each query's content."""
        with torch.set_grad_enabled(soft_tokens is not None and soft_tokens.requires_grad):
            return self._pooled(self.splice_queries(texts, soft_tokens))

    @torch.no_grad()
    def encode_videos(self, clips: Sequence[VideoClip]) -> torch.Tensor:
        """(B, D) float32, L2-normalised, one embedding per clip from its frames and true timestamps."""
        if not clips:
            raise ValueError("no clips to encode")
        rows, per_item = [], []
        for clip in clips:
            check_clip(clip)
            patches, inputs = self.vision.clip_inputs(clip)
            row = self.video_prefix + self._encode(self.vision.video_text(patches)) + self.suffix
            self.vision.check_video_tokens(row, patches)
            rows.append(row)
            per_item.append(inputs)
        ids, mask, last = pad_token_rows(rows, self.pad_id, self.config.padding_side)
        embeds = self.model.get_input_embeddings()(ids.to(self.device))
        batch = SplicedBatch(
            ids, embeds, mask.to(self.device), last.to(self.device), ids.new_zeros(len(rows), 0)
        )
        return self._pooled(batch, per_item).cpu()

    # --- persistence -----------------------------------------------------------------------------
    def _save_model(self, directory: Path) -> dict[str, Any]:
        files = {}
        if self.config.model is None or self.config.store_weights:
            with atomic_directory(directory / MODEL_FOLDER) as staging:
                self.model.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
            files["model"] = MODEL_FOLDER
        return {"config": self.config.to_dict(), "files": files}

    @classmethod
    def _load_model(cls, directory: Path, meta: dict[str, Any]) -> VLMEmbeddingEngine:
        config = config_from_dict(VLMEmbeddingConfig, meta["config"], str(directory))
        stored = meta.get("files", {}).get("model")
        if stored is None:
            return cls(config)
        model, tokenizer = load_checkpoint(directory / stored, config.dtype)
        return cls(config, model=model, tokenizer=tokenizer)


def chat_prefix(instruction: str) -> str:
    return f"{IM_START}system\n{instruction}{IM_END}\n{IM_START}user\n"


CHAT_SUFFIX = f"{IM_END}\n{IM_START}assistant\n"
