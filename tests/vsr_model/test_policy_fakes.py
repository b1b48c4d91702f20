"""Small real-architecture models and a fake search engine shared by the policy, SQR and agent tests.

Everything is randomly initialised from configs: a byte-level BPE tokenizer trained on the protocol's
own words, a tiny Llama, the EfficientNet-Lite0 architecture at 32 px, and a search engine whose query
encoder is a tiny BERT (mean pooling) with soft tokens inserted after the query's content tokens, so
gradients from InfoNCE really flow back through an encoder into the SQR heads and the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vsr_model.backbones import tiny_frame_encoder, tiny_text_encoder
from vsr_model.policy.composite import CHATML_TEMPLATE, CompositePolicyConfig, CompositeVideoPolicy
from vsr_model.protocol import build_verify_prompt, format_response
from vsr_model.sqr import SQRConfig

_CORPUS = [
    build_verify_prompt("a person opens the door and walks to the kitchen", 30.0).system,
    build_verify_prompt("a person opens the door", 30.0, "hard").system,
    format_response("the person opens a door at the start of the video", True, (1.5, 12.25)),
    format_response("this video shows a dog, not a person", False),
    "Video seconds long; each frame is labelled with its time in seconds: Query: Does this video contain",
    "0123456789 . s < > system user assistant red blue green circle square moves grows appears",
]


def tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def tiny_composite_policy(engine: FakeEngine, hidden: int = 64, num_latents: int = 4, seed: int = 0):
    tokenizer = tiny_tokenizer()
    lm = tiny_llama(len(tokenizer) + 2, hidden=hidden, seed=seed)
    sqr = SQRConfig(
        embed_dim=engine.embed_dim, query_input_dim=engine.query_input_dim, num_latents=num_latents
    )
    config = CompositePolicyConfig(llm="tiny", frame_encoder="tiny", frame_size=32)
    torch.manual_seed(seed)
    return CompositeVideoPolicy(
        lm, tokenizer, tiny_frame_encoder(image_size=32, seed=seed), config, sqr
    ).eval()


@dataclass
class Clip:
    frames: np.ndarray
    timestamps: np.ndarray
    duration: float


def make_clip(num_frames: int = 4, seed: int = 0, duration: float = 20.0, size: int = 40) -> Clip:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, size, size + 8, 3), dtype=np.uint8)
    times = np.linspace(0.5, duration - 0.5, num_frames)
    return Clip(frames, times, duration)


@dataclass
class Hit:
    video_id: str
    score: float


class FakeEngine:
    """Tiny BERT query encoder (mean pooling, soft tokens after the content tokens) + fixed video vectors."""

    def __init__(self, num_videos: int = 40, embed_dim: int = 32, seed: int = 0) -> None:
        self.tokenizer, self.encoder = tiny_text_encoder(hidden_size=embed_dim, seed=seed)
        self.embed_dim = embed_dim
        self.query_input_dim = self.encoder.config.hidden_size
        g = torch.Generator().manual_seed(seed + 1)
        self.video_ids = [f"v{i}" for i in range(num_videos)]
        self._videos = torch.nn.functional.normalize(torch.randn(num_videos, embed_dim, generator=g), dim=-1)
        self.calls: list[tuple[str, int]] = []

    def encode_query(self, texts: Sequence[str], soft_tokens: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True)
        words = self.encoder.embeddings.word_embeddings(enc["input_ids"])
        mask = enc["attention_mask"]
        if soft_tokens is not None:
            if soft_tokens.shape[0] != len(texts) or soft_tokens.shape[2] != self.query_input_dim:
                raise ValueError(f"soft tokens {tuple(soft_tokens.shape)} do not fit")
            rows, masks = [], []
            for i in range(len(texts)):
                n = int(mask[i].sum()) - 1  # content tokens before [SEP]
                rows.append(torch.cat([words[i, :n], soft_tokens[i].to(words), words[i, n:]]))
                masks.append(torch.cat([mask[i, :n], mask.new_ones(soft_tokens.shape[1]), mask[i, n:]]))
            words, mask = torch.stack(rows), torch.stack(masks)
        hidden = self.encoder(inputs_embeds=words, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        self.calls.append(("encode_query", len(texts)))
        return torch.nn.functional.normalize(pooled, dim=-1)

    def video_embeddings(self, video_ids: Sequence[str]) -> torch.Tensor:
        index = {v: i for i, v in enumerate(self.video_ids)}
        unknown = [v for v in video_ids if v not in index]
        if unknown:
            raise KeyError(f"unknown video ids {unknown[:5]}")
        return self._videos[[index[v] for v in video_ids]]

    def search(self, queries: torch.Tensor, k: int, exclude=None) -> list[list[Hit]]:
        scores = queries.detach().float() @ self._videos.T
        out = []
        for i in range(scores.shape[0]):
            banned = set(exclude[i]) if exclude is not None else set()
            order = torch.argsort(scores[i], descending=True).tolist()
            hits = [
                Hit(self.video_ids[j], float(scores[i, j])) for j in order if self.video_ids[j] not in banned
            ]
            out.append(hits[:k])
        self.calls.append(("search", scores.shape[0]))
        return out

    def rank_of(self, query: torch.Tensor, video_id: str, exclude=()) -> int | None:
        """1-based rank of `video_id` for one query (1, D), `exclude`d videos left out (ties count against)."""
        if video_id in exclude:
            return None
        scores = (query.detach().float() @ self._videos.T)[0]
        target = scores[self.video_ids.index(video_id)]
        kept = [s for v, s in zip(self.video_ids, scores.tolist(), strict=True) if v not in exclude]
        return sum(s >= float(target) for s in kept)


QWEN_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]


def tiny_qwen_model(model_type: str, seed: int = 0):
    """(Qwen2.5-VL or Qwen3-VL ...ForConditionalGeneration with tiny random weights, its tokenizer with
    the vision special tokens, (min_pixels, max_pixels) giving a few patches per frame)."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = dict(
        vocab_size=len(tokenizer) + 1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        video_token_id=ids["<|video_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        )
        pixels = (4 * 28 * 28, 16 * 28 * 28)
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            out_hidden_size=64,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        text["head_dim"] = 16
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        }
        model = Qwen3VLForConditionalGeneration(
            Qwen3VLConfig(text_config=text, vision_config=vision, **common)
        )
        pixels = (4 * 32 * 32, 16 * 32 * 32)
    return model.eval(), tokenizer, pixels


def tiny_qwen_policy(model_type: str, engine: FakeEngine, num_latents: int = 3, seed: int = 0):
    """A randomly initialised Qwen2.5-VL or Qwen3-VL (real classes, tiny sizes) as a QwenVLPolicy."""
    from vsr_model.policy.qwen_vl import QwenVLPolicy, QwenVLPolicyConfig

    model, tokenizer, pixels = tiny_qwen_model(model_type, seed)
    sqr = SQRConfig(
        embed_dim=engine.embed_dim, query_input_dim=engine.query_input_dim, num_latents=num_latents
    )
    config = QwenVLPolicyConfig(model="tiny", min_pixels=pixels[0], max_pixels=pixels[1], dtype="float32")
    return QwenVLPolicy(model.eval(), tokenizer, config, sqr).eval()
