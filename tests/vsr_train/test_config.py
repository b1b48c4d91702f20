"""Strict YAML configuration loading (vsr_train.config)."""

from __future__ import annotations

import pytest

from vsr_train.config import ConfigError, GRPOConfig, SFTConfig, config_to_dict, load_config

TINY_MODEL = "model:\n  random_init: {model_type: llama, hidden_size: 16}\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_nested_sections_and_keeps_defaults(tmp_path):
    path = write(
        tmp_path,
        TINY_MODEL + "data: {kind: synthetic_tokens}\noptim: {lr: 1e-5, betas: [0.9, 0.95]}\n"
        "deepspeed: {config: zero3, precision: fp32}\n",
    )
    cfg = load_config(SFTConfig, path)
    assert cfg.optim.lr == 1e-5  # YAML reads 1e-5 as a string; it still becomes a float
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.deepspeed.config == "zero3" and cfg.deepspeed.precision == "fp32"
    assert cfg.infonce.weight == 0.3 and cfg.infonce.num_negatives == 24  # METHOD.md defaults
    assert cfg.infonce.temperature == 0.1
    assert config_to_dict(cfg)["optim"]["betas"] == [0.9, 0.95]


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path):
    path = write(tmp_path, TINY_MODEL + "data: {kind: synthetic_tokens}\noptim: {learning_rate: 1e-5}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'optim\.learning_rate'"):
        load_config(SFTConfig, path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deepspeed: {precision: fp16}", "deepspeed.precision"),
        ("deepspeed: {micro_batch_size: 0}", "micro_batch_size must be > 0"),
        ("epochs: 1.5", "'epochs' must be an integer"),
        ("logging: {tensorboard: 'yes'}", "must be true or false"),
        ("optim: {betas: [0.9]}", "must have 2 items"),
    ],
)
def test_bad_values_are_errors(tmp_path, text, message):
    path = write(tmp_path, TINY_MODEL + "data: {kind: synthetic_tokens}\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, path)


def test_model_section_is_validated_even_when_omitted(tmp_path):
    path = write(tmp_path, "data: {kind: synthetic_tokens}\n")
    with pytest.raises(ConfigError, match=r"exactly one of model\.name_or_path or model\.random_init"):
        load_config(SFTConfig, path)


def test_grpo_cross_field_checks_and_overrides(tmp_path):
    path = write(tmp_path, TINY_MODEL + "data: {kind: synthetic_tokens}\ngrpo: {loss_type: dr_grpo}\n")
    with pytest.raises(ConfigError, match="scale_rewards"):
        load_config(GRPOConfig, path)
    cfg = load_config(GRPOConfig, path, overrides=["grpo.scale_rewards=false", "grpo.group_size=4"])
    assert cfg.grpo.group_size == 4 and not cfg.grpo.scale_rewards
    assert cfg.grpo.beta == 0.01 and cfg.grpo.clip_eps_low == 0.2 and cfg.optim.lr == 5e-7
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        load_config(GRPOConfig, path, overrides=["grpo.scale_rewards=false", "grpo.group_size=1"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SFTConfig, write(tmp_path, "- a\n- b\n"))
