"""Every `vsr demo` size builds stage configs that the stages accept, before any stage has run: a size
whose batch cannot hold whole groups, or a setting a loader refuses, would otherwise fail only after
the stages before it. Each config goes through YAML and the strict loader, as the stage reads it."""

from __future__ import annotations

import pytest
import yaml

from vsr_train.config import EvalConfig, GRPOConfig, SFTConfig, config_to_dict, load_config
from vsr_train.demo import SIZES, Demo, DemoSettings
from vsr_train.evaluate import variant_runs
from vsr_train.grpo import prompts_per_step


@pytest.mark.parametrize("name", sorted(SIZES))
def test_each_size_writes_stage_configs_the_stages_accept(tmp_path, name):
    size = SIZES[name]
    demo = Demo(DemoSettings(out=tmp_path / "demo", size=name))
    for cls, cfg in (
        (SFTConfig, demo.sft_config()),
        (GRPOConfig, demo.grpo_config()),
        (EvalConfig, demo.eval_config()),
    ):
        path = tmp_path / f"{cls.__name__}.yaml"
        path.write_text(yaml.safe_dump(config_to_dict(cfg)))
        assert config_to_dict(load_config(cls, path)) == config_to_dict(cfg)
    grpo = demo.grpo_config()
    assert grpo.grpo.group_size == size.group_size
    assert prompts_per_step(grpo) == size.grpo_prompts_per_step
    keys = [run.key for run in variant_runs(demo.eval_config())]
    turns = size.eval_turns
    assert keys == [f"{p}{r}_{turns}" for p in ("", "oracle_") for r in ("sqr", "hqr", "next")]


def test_overrides_reach_the_typed_configs_and_bad_ones_are_refused(tmp_path):
    settings = DemoSettings(
        out=tmp_path / "demo",
        size="tiny",
        overrides={"sft": {"optim": {"lr": 3e-4}}, "eval": {"agent": {"top_k": 4}}},
    )
    demo = Demo(settings)
    assert demo.sft_config().optim.lr == 3e-4 and demo.eval_config().agent.top_k == 4
    settings.overrides = {"sft": {"optim": {"learning_rate": 1.0}}}
    with pytest.raises(ValueError, match=r"optim\.learning_rate"):
        Demo(settings).sft_config()
