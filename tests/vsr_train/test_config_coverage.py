"""Every setting a config accepts is read by the code it configures: each field of each config dataclass of
vsr (the strict loader accepts exactly these) is accessed by name (`.field`, or as a key) in the packages'
code outside its own class (reading it only in the class's checks does not count). A field nothing reads
would be a setting that changes nothing; this test names it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

CONFIG_CLASSES = [
    "vsr_model.agent:AgentConfig",
    "vsr_model.sqr:SQRConfig",
    "vsr_model.sqr:InfoNCEConfig",
    "vsr_model.rewards:RewardConfig",
    "vsr_model.policy.base:GenerationSettings",
    "vsr_model.policy.composite:CompositePolicyConfig",
    "vsr_model.policy.qwen_vl:QwenVLPolicyConfig",
    "vsr_model.policy.connector:ConnectorAlignmentConfig",
    "vsr_model.engine.vlm:VLMEmbeddingConfig",
    "vsr_model.engine.dual:DualEncoderConfig",
    "vsr_model.engine.dual:TextEncoderConfig",
    "vsr_model.engine.dual:PoolerConfig",
    "vsr_model.engine.fit:FitConfig",
    "vsr_model.backbones:FrameEncoderConfig",
    "vsr_model.video:FrameSampling",
    "vsr_model.data.synth:SynthConfig",
    "vsr_model.corpus:BuildConfig",
    "vsr_train.config:FreshPolicy",
    "vsr_train.config:ModelConfig",
    "vsr_train.config:DeepSpeedSettings",
    "vsr_train.config:OptimConfig",
    "vsr_train.config:CheckpointConfig",
    "vsr_train.config:LoggingConfig",
    "vsr_train.config:DataConfig",
    "vsr_train.config:VerifyEvalConfig",
    "vsr_train.config:SFTConfig",
    "vsr_train.config:GRPOSettings",
    "vsr_train.config:RolloutConfig",
    "vsr_train.config:GRPOConfig",
    "vsr_train.config:EvalVariant",
    "vsr_train.config:EvalConfig",
    "vsr_train.vsr_examples:ExampleSettings",
    "vsr_train.report_html:ReportSettings",
]

ROOT = Path(__file__).resolve().parents[2] / "packages"
SOURCES = {p: p.read_text() for p in ROOT.glob("*/src/**/*.py")}


def _class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _uses(name: str, cls: type) -> int:
    """Accesses `.name` (attribute) or `"name"` (a key in a dict built from a config) in the sources,
    the class's own body left out."""
    own = inspect.getsource(cls)
    pattern = re.compile(rf"\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"']")
    return sum(len(pattern.findall(text.replace(own, ""))) for text in SOURCES.values())


@pytest.mark.parametrize("spec", CONFIG_CLASSES)
def test_every_field_is_read_somewhere(spec):
    cls = _class(spec)
    assert dataclasses.is_dataclass(cls), spec
    unread = [f.name for f in dataclasses.fields(cls) if _uses(f.name, cls) == 0]
    assert not unread, f"{spec}: fields no code reads: {unread}"
