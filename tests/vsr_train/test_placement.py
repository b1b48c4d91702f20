"""Device placement without a GPU: the GRPO reference model and the frozen search engine end on the device
the policy computes on (a `meta` device stands in for a GPU), for every ZeRO stage with a KL term, and
nothing is built without one."""

from __future__ import annotations

import copy

import pytest
import torch

from vsr_train.config import GRPOConfig, config_from_dict
from vsr_train.grpo import build_reference
from vsr_train.placement import frozen_reference, place_frozen
from vsr_train.policy_loader import LoadedModel
from vsr_train.runtime import build_deepspeed_config
from vsr_train.tiny import tiny_search_setup, tiny_video_policy

META = torch.device("meta")


def grpo_config(stage: str, beta: float) -> GRPOConfig:
    return config_from_dict(
        GRPOConfig,
        {
            "grpo": {"group_size": 2, "beta": beta},
            "model": {"kind": "vsr_policy", "name_or_path": "unused"},
            "data": {"kind": "vsr_jsonl", "path": "x", "engine_dir": "x", "corpus": "x"},
            "deepspeed": {"config": stage, "precision": "fp32", "micro_batch_size": 2},
        },
    )


@pytest.fixture(scope="module")
def policy():
    return tiny_video_policy(16, 32)


@pytest.mark.parametrize("stage", ["zero1", "zero2"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_the_reference_sits_on_the_policy_device_for_zero_below_3(policy, stage, beta):
    cfg = grpo_config(stage, beta)
    ds_config = build_deepspeed_config(cfg.deepspeed, 1)
    reference = build_reference(cfg, ds_config, LoadedModel(policy, None), torch.get_rng_state(), META)
    if beta == 0:
        assert reference is None
        return
    model, rebuilt = reference
    assert rebuilt is None and model is not policy
    assert all(p.device == META and not p.requires_grad for p in model.parameters())
    assert not model.training
    assert all(p.device.type == "cpu" for p in policy.parameters())  # the policy itself is not moved


def test_zero0_reference_and_the_search_engine_follow_the_device(policy, tmp_path):
    ds_config = {"zero_optimization": {"stage": 0}}
    model = frozen_reference(copy.deepcopy(policy), ds_config, META)
    assert {p.device for p in model.parameters()} == {META}
    engine, _ = tiny_search_setup(tmp_path / "bench", num_train=2, num_test=2)
    place_frozen(engine, META)
    modules = [m for m in vars(engine).values() if isinstance(m, torch.nn.Module)]
    assert modules and all(p.device == META and not p.requires_grad for m in modules for p in m.parameters())
    assert engine.device == META
