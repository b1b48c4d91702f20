"""Shipped configs load, and the DeepSpeed config is assembled from one source of truth."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from vsr_train.config import (
    ConfigError,
    DeepSpeedSettings,
    EvalConfig,
    GRPOConfig,
    OptimConfig,
    SFTConfig,
    load_config,
)
from vsr_train.runtime import PRESETS, build_deepspeed_config, lr_multiplier


@pytest.mark.parametrize(
    ("name", "cls"), [("sft.yaml", SFTConfig), ("grpo.yaml", GRPOConfig), ("eval.yaml", EvalConfig)]
)
def test_shipped_yaml_configs_load(name, cls):
    path = resources.files("vsr_train").joinpath("configs", name)
    cfg = load_config(cls, str(path))
    if cls is SFTConfig:
        assert (cfg.optim.lr, cfg.optim.sqr_lr, cfg.infonce.weight, cfg.infonce.num_negatives) == (
            2e-5,
            5e-5,
            0.3,
            24,
        )
    if cls is GRPOConfig:
        assert (cfg.grpo.group_size, cfg.grpo.beta, cfg.grpo.clip_eps_low, cfg.optim.lr) == (
            8,
            0.01,
            0.2,
            5e-7,
        )


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_presets_get_batch_sizes_and_precision_from_yaml(preset, precision):
    settings = DeepSpeedSettings(
        config=preset, precision=precision, micro_batch_size=3, gradient_accumulation_steps=4
    )
    ds = build_deepspeed_config(settings, world_size=16)
    assert ds["train_batch_size"] == 3 * 4 * 16
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"]["enabled"] == (precision == "bf16")
    stage = {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}[preset]
    assert ds["zero_optimization"]["stage"] == stage
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert ("offload_optimizer" in ds["zero_optimization"]) == (preset == "zero3_offload")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"train_micro_batch_size_per_gpu": 7}, "the YAML is the one source"),
        ({"optimizer": {"type": "Adam"}}, "optimizer/scheduler"),
        ({"fp16": {"enabled": True}}, "fp16 is not supported"),
        ({"train_batch_size": 64}, "train_batch_size"),
    ],
)
def test_conflicting_deepspeed_json_is_an_error(tmp_path, extra, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}} | extra))
    with pytest.raises(ConfigError, match=message):
        build_deepspeed_config(DeepSpeedSettings(config=str(path)), world_size=1)
    with pytest.raises(ConfigError, match="neither a preset"):
        build_deepspeed_config(DeepSpeedSettings(config=str(tmp_path / "absent.json")), world_size=1)


def test_lr_schedules():
    warm = OptimConfig(lr=1.0, warmup_steps=4, scheduler="cosine")
    assert [lr_multiplier(s, warm, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, warm, 12) == pytest.approx(1.0)
    assert lr_multiplier(8, warm, 12) == pytest.approx(0.5)
    assert lr_multiplier(12, warm, 12) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(100, OptimConfig(scheduler="constant"), 10) == 1.0


def test_param_groups_give_sqr_heads_and_connector_their_own_rates():
    import torch

    from vsr_train.runtime import param_groups

    model = torch.nn.ModuleDict(
        {
            "lm": torch.nn.Linear(4, 4),
            "projector": torch.nn.Linear(4, 4),
            "sqr": torch.nn.Linear(4, 4),
            "frozen": torch.nn.Linear(4, 4),
        }
    )
    model["frozen"].requires_grad_(False)
    optim = OptimConfig(lr=1e-5, sqr_lr=5e-5, connector_lr=1e-3, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(model, optim, ("sqr.",), ("projector.",))}
    assert sorted(groups) == [
        "connector_decay",
        "connector_no_decay",
        "main_decay",
        "main_no_decay",
        "sqr_decay",
        "sqr_no_decay",
    ]
    assert groups["connector_decay"]["params"] == [model["projector"].weight]
    assert groups["connector_no_decay"]["params"] == [model["projector"].bias]
    assert [g["lr"] for g in (groups["main_decay"], groups["connector_decay"], groups["sqr_decay"])] == [
        1e-5,
        1e-3,
        5e-5,
    ]
    assert groups["sqr_no_decay"]["weight_decay"] == 0.0 and groups["sqr_decay"]["weight_decay"] == 0.1
    # Unset rates fall back to lr; frozen parameters are in no group.
    fallback = param_groups(model, OptimConfig(lr=2e-5, sqr_lr=None), ("sqr.",), ("projector.",))
    assert {g["lr"] for g in fallback} == {2e-5}
    assert sum(len(g["params"]) for g in fallback) == 6


def test_learning_rates_are_logged_per_parameter_kind():
    import torch

    from vsr_train.runtime import learning_rates, param_groups

    model = torch.nn.ModuleDict({"lm": torch.nn.Linear(4, 4), "sqr": torch.nn.Linear(4, 4)})
    groups = param_groups(model, OptimConfig(lr=1e-5, sqr_lr=5e-5), ("sqr.",))
    optimizer = torch.optim.AdamW(groups)
    assert learning_rates(optimizer) == {"lr/main": 1e-5, "lr/sqr": 5e-5}
