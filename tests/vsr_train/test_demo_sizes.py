"""Every `vsr demo` size writes a Stage-2 config that the GRPO loop accepts, before any stage has run:
a size whose batch cannot hold whole groups would otherwise fail only after Stage 1."""

from __future__ import annotations

import pytest
import yaml

from vsr_train.config import GRPOConfig, load_config
from vsr_train.demo import SIZES, grpo_stage_config
from vsr_train.grpo import prompts_per_step


@pytest.mark.parametrize("name", sorted(SIZES))
def test_each_size_writes_a_valid_grpo_config(tmp_path, name):
    size = SIZES[name]
    common = {
        "seed": 0,
        "deepspeed": {"config": "zero1", "precision": "fp32", "micro_batch_size": size.micro_batch_size},
    }
    data = {"kind": "vsr_jsonl", "path": "stage1.jsonl", "engine_dir": "engine", "corpus": "videos.jsonl"}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(grpo_stage_config(size, common, str(tmp_path), "policy", data)))
    cfg = load_config(GRPOConfig, path)
    assert cfg.grpo.group_size == size.group_size
    assert prompts_per_step(cfg) == size.grpo_prompts_per_step
