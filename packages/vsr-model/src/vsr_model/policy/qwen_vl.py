"""Hugging Face Qwen2.5-VL and Qwen3-VL as the policy, with frames and true timestamps fed directly.

No processor object is needed (the HF video processors require torchvision): frames are resized,
normalised and cut into the checkpoint's patch layout here (`vsr_model.policy.qwen_frames`), and the
video placeholder text is written with the real per-frame times:

- Qwen3-VL: each temporal patch (pair of frames) is `<t seconds><|vision_start|><|video_pad|>...
  <|vision_end|>` with t the mean true time of its frames, the format the model was trained on.
- Qwen2.5-VL: one `<|vision_start|>...<|vision_end|>` block whose temporal RoPE spacing
  (second_per_grid_ts) is the mean true interval between temporal patches; the true times are also
  listed as text, since irregular sampling cannot be expressed by one spacing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

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
from vsr_model.policy.qwen_frames import FramePatches, PatchLayout, patchify_frames
from vsr_model.sqr import SQRConfig, SQRHeads

QWEN2_5_VL = "qwen2_5_vl"
QWEN3_VL = "qwen3_vl"
# Normalisation each family's released processor uses (preprocessor_config.json overrides these).
_DEFAULT_MEAN_STD = {
    QWEN2_5_VL: ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    QWEN3_VL: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def qwen_model_class(model_type: str, lm_head: bool = True) -> type[PreTrainedModel]:
    """The HF class of a Qwen-VL family: with the LM head (policy) or the bare model (embedder)."""
    if model_type == QWEN2_5_VL:
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

        return Qwen2_5_VLForConditionalGeneration if lm_head else Qwen2_5_VLModel
    if model_type == QWEN3_VL:
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

        return Qwen3VLForConditionalGeneration if lm_head else Qwen3VLModel
    raise ValueError(f"unsupported Qwen-VL model type {model_type!r}; supported: {QWEN2_5_VL}, {QWEN3_VL}")


@dataclass
class QwenVisionSettings:
    """Settings every user of a Qwen-VL checkpoint shares. `min_pixels`/`max_pixels`: per-frame pixel
    budget after resizing. `image_mean`/`image_std`: None to read the checkpoint's
    preprocessor_config.json or the family default. `dtype`: the weights' dtype."""

    min_pixels: int = 16 * 32 * 32
    max_pixels: int = 256 * 32 * 32
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"{name}: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{name}: dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for field_name in ("image_mean", "image_std"):
            value = getattr(self, field_name)
            if value is not None:
                if len(value) != 3:
                    raise ValueError(f"{name}: {field_name} needs 3 channel values, got {value!r}")
                setattr(self, field_name, tuple(float(v) for v in value))


@dataclass
class QwenVLPolicyConfig(QwenVisionSettings):
    """`model`: HF name or local path; the vision settings are QwenVisionSettings'."""

    model: str = "Qwen/Qwen3-VL-2B-Instruct"


def read_normalisation(location: str | None, model_type: str) -> tuple[tuple, tuple]:
    """Pixel mean/std from a checkpoint folder's (video_)preprocessor_config.json, else the family's."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if not location:
            break
        path = Path(location) / name
        if path.is_file():
            data = json.loads(path.read_text())
            if "image_mean" in data and "image_std" in data:
                return tuple(data["image_mean"]), tuple(data["image_std"])
    return _DEFAULT_MEAN_STD[model_type]


class QwenVideoInputs:
    """How a Qwen-VL checkpoint is shown a clip: the patch layout its vision tower expects, the video
    placeholder text carrying the frames' true times, and the model inputs of a padded batch (patches,
    grids, mm_token_type_ids, M-RoPE position ids). Shared by the policy and the embedding engine."""

    def __init__(self, config, tokenizer, min_pixels: int, max_pixels: int, mean: tuple, std: tuple):
        self.model_type = config.model_type
        qwen_model_class(self.model_type)  # validates the type
        vision = config.vision_config
        self.layout = PatchLayout(
            patch_size=int(vision.patch_size),
            temporal_patch_size=int(vision.temporal_patch_size),
            merge_size=int(vision.spatial_merge_size),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            mean=tuple(mean),
            std=tuple(std),
        )
        self.video_token_id = int(config.video_token_id)
        self.vision_start = tokenizer.convert_ids_to_tokens(int(config.vision_start_token_id))
        self.vision_end = tokenizer.convert_ids_to_tokens(int(config.vision_end_token_id))
        self.video_token = tokenizer.convert_ids_to_tokens(self.video_token_id)

    def video_text(self, patches: FramePatches) -> str:
        tokens_per_group = patches.grid_h * patches.grid_w // self.layout.merge_size**2
        if self.model_type == QWEN3_VL:
            return "".join(
                f"<{t:.1f} seconds>{self.vision_start}{self.video_token * tokens_per_group}{self.vision_end}"
                for t in patches.group_times
            )
        times = ", ".join(f"{t:.1f}" for t in patches.group_times)
        pads = self.video_token * (tokens_per_group * patches.grid_t)
        return f"{self.vision_start}{pads}{self.vision_end}\nFrame times (seconds): {times}"

    def clip_inputs(self, clip) -> tuple[FramePatches, dict[str, torch.Tensor]]:
        """The patches of a clip's frames (true times kept) and its per-item model inputs."""
        patches = patchify_frames(np.asarray(clip.frames), np.asarray(clip.timestamps), self.layout)
        inputs = {
            "pixel_values_videos": patches.pixel_values,
            "video_grid_thw": torch.tensor([[patches.grid_t, patches.grid_h, patches.grid_w]]),
            "second_per_grid_ts": torch.tensor([patches.seconds_per_group], dtype=torch.float32),
        }
        return patches, inputs

    def check_video_tokens(self, ids: list[int], patches: FramePatches) -> None:
        expected = patches.grid_t * patches.grid_h * patches.grid_w // self.layout.merge_size**2
        found = sum(1 for t in ids if t == self.video_token_id)
        if found != expected:
            raise ValueError(f"prompt has {found} video tokens, the frames need {expected}")

    def collate(
        self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, per_item: list[dict] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """M-RoPE position ids (3, B, L) of a padded batch (either side) and its model inputs.

        `model` is the bare Qwen-VL model (it owns get_rope_index); per_item None: a text-only batch."""
        inputs: dict[str, torch.Tensor] = {}
        rope_kwargs = {}
        if per_item:
            inputs["pixel_values_videos"] = torch.cat([p["pixel_values_videos"] for p in per_item])
            inputs["video_grid_thw"] = torch.cat([p["video_grid_thw"] for p in per_item])
            rope_kwargs["video_grid_thw"] = inputs["video_grid_thw"]
            if self.model_type == QWEN2_5_VL:
                inputs["second_per_grid_ts"] = torch.cat([p["second_per_grid_ts"] for p in per_item])
                rope_kwargs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
        inputs["mm_token_type_ids"] = (ids == self.video_token_id).int() * 2
        position_ids, _ = model.get_rope_index(
            ids, mm_token_type_ids=inputs["mm_token_type_ids"], attention_mask=mask, **rope_kwargs
        )
        return position_ids, inputs


class QwenVLPolicy(VideoPolicy):
    family = "qwen_vl"

    def __init__(
        self, model: PreTrainedModel, tokenizer, config: QwenVLPolicyConfig, sqr_config: SQRConfig, sqr=None
    ):
        super().__init__()
        self.model_type = model.config.model_type
        qwen_model_class(self.model_type)  # validates the type
        self.config = config
        self._tokenizer = tokenizer
        add_policy_tokens(tokenizer, model)
        self.model = model
        if config.image_mean is None or config.image_std is None:
            mean, std = read_normalisation(config.model, self.model_type)
            config.image_mean = config.image_mean or tuple(mean)
            config.image_std = config.image_std or tuple(std)
        self.vision = QwenVideoInputs(
            model.config, tokenizer, config.min_pixels, config.max_pixels, config.image_mean, config.image_std
        )
        self.layout = self.vision.layout
        self.video_token_id = self.vision.video_token_id
        cfg = model.config
        hidden = cfg.get_text_config().hidden_size
        self.sqr = sqr if sqr is not None else SQRHeads(hidden, sqr_config)
        if self.sqr.hidden_size != hidden:
            raise ValueError(
                f"SQR heads built for hidden size {self.sqr.hidden_size}, the model has {hidden}"
            )

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def suppressed_token_ids(self) -> list[int]:
        cfg = self.model.config
        ids = [cfg.video_token_id, getattr(cfg, "image_token_id", None), cfg.vision_start_token_id]
        return [int(i) for i in ids if i is not None]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def _prompt_tokens(self, item: VerifyInput):
        patches, inputs = self.vision.clip_inputs(item.clip)
        text = self.render_prompt_text(item, self.vision.video_text(patches))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        self.vision.check_video_tokens(ids, patches)
        return ids, inputs

    def _collate(self, ids, mask, per_item):
        return self.vision.collate(self.model.model, ids, mask, per_item)

    def text_position_ids(self, start: torch.Tensor, length: int) -> torch.Tensor:
        # After the vision block every text token advances all three M-RoPE axes together.
        return super().text_position_ids(start, length).unsqueeze(0).expand(3, -1, -1)

    def embed_inputs(self, batch: PolicyBatch) -> torch.Tensor:
        return self.get_input_embeddings()(batch.input_ids)

    def run_backbone(
        self, inputs_embeds, attention_mask, position_ids, cache=None, batch=None, use_cache=False
    ):
        visual = {}
        if batch is not None:
            visual = {
                "pixel_values_videos": batch.model_inputs["pixel_values_videos"].to(self.device, self.dtype),
                "video_grid_thw": batch.model_inputs["video_grid_thw"].to(self.device),
            }
        out = self.model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **visual,
        )
        return out.last_hidden_state, (out.cache if use_cache else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

    def generate(self, batch: PolicyBatch, settings: GenerationSettings) -> Generation:
        batch = batch.to(self.device)
        inputs = dict(batch.model_inputs)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.dtype)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                **self.generation_kwargs(settings),
                **inputs,
            )
        return decode_completions(self.tokenizer, out[:, batch.input_ids.shape[1] :], self.stop_token_ids)

    def policy_config(self) -> dict:
        return {"qwen_vl": asdict(self.config)}

    def _save_backbone(self, directory: Path) -> None:
        self.model.save_pretrained(directory / "model")

    @classmethod
    def build(
        cls,
        config: QwenVLPolicyConfig,
        sqr_config: SQRConfig,
        model: PreTrainedModel | None = None,
        tokenizer=None,
    ) -> QwenVLPolicy:
        """Load `config.model` (or wrap the given model/tokenizer) with fresh SQR heads."""
        if model is None:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(config.model).model_type
            model = qwen_model_class(model_type).from_pretrained(
                config.model, dtype=getattr(torch, config.dtype)
            )
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model)
        return cls(model, tokenizer, config, sqr_config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> QwenVLPolicy:
        directory = Path(directory)
        saved = read_policy_config(directory)
        if saved.get("family") != cls.family:
            raise ValueError(f"{directory} holds a {saved.get('family')!r} policy, not a Qwen-VL one")
        config = config_from_dict(QwenVLPolicyConfig, saved["qwen_vl"], str(directory))
        sqr_config = SQRConfig.from_saved(saved["sqr"])
        model_dir = directory / "model"
        model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
        model = qwen_model_class(model_type).from_pretrained(model_dir, dtype=getattr(torch, config.dtype))
        tokenizer = AutoTokenizer.from_pretrained(directory)
        heads = load_sqr_heads(directory, model.config.get_text_config().hidden_size, sqr_config)
        return cls(model, tokenizer, config, sqr_config, sqr=heads)
