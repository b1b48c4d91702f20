"""The video LLM policy: one interface (VideoPolicy) over two families.

- `composite`: any HF causal LM + a frame encoder + a projector (LLaVA-style), timestamps as text.
- `qwen_vl`: Hugging Face Qwen2.5-VL / Qwen3-VL, frames and their true timestamps fed directly.
"""

from __future__ import annotations

import os

from vsr_model.policy.base import (
    Generation,
    GenerationSettings,
    PolicyBatch,
    VerifyInput,
    VideoPolicy,
    read_policy_config,
)
from vsr_model.policy.composite import CompositePolicyConfig, CompositeVideoPolicy


def load_policy(directory: str | os.PathLike, **kwargs) -> VideoPolicy:
    """Load any saved policy; the family is read from its vsr_policy.json."""
    family = read_policy_config(directory).get("family")
    if family == CompositeVideoPolicy.family:
        return CompositeVideoPolicy.from_pretrained(directory, **kwargs)
    if family == "qwen_vl":
        from vsr_model.policy.qwen_vl import QwenVLPolicy

        return QwenVLPolicy.from_pretrained(directory, **kwargs)
    raise ValueError(f"{directory}: unknown policy family {family!r}")


__all__ = [
    "CompositePolicyConfig",
    "CompositeVideoPolicy",
    "Generation",
    "GenerationSettings",
    "PolicyBatch",
    "VerifyInput",
    "VideoPolicy",
    "load_policy",
]
