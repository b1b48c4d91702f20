"""`vsr train init-policy`: the policy Stage 1 starts from, written once as a policy folder.

A fresh composite policy (the default SmolLM2 over EfficientNet-Lite0, or any saved policy) gets SQR
heads sized for the search engine and, unless turned off, a connector alignment on the training
annotations (vsr_model.policy.connector). Converting the GGUF checkpoint and fitting the projector
then happen once, not in every training process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch


def described_videos(
    annotations: str, corpus_file: str, split: str | None, fmt: str | None = None, teacher=None
) -> Iterator:
    """Each annotated video of the corpus with its frames (the corpus' default sampling, as in
    training), its moments and, from a teacher that knows them (SyntheticTeacher), each frame's words.
    An annotated video missing from the corpus is an error."""
    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_model.policy.connector import DescribedVideo

    moments = read_moments(annotations, fmt).moments
    corpus = Corpus.from_jsonl(corpus_file, split=split)
    by_video: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for m in moments:
        by_video[m.video_id].append((float(m.start), float(m.end), m.query))
    missing = sorted(set(by_video) - set(corpus.ids))
    if missing:
        raise ValueError(f"{len(missing)} annotated videos are not in {corpus_file}: {missing[:5]}")
    for video_id in sorted(by_video):
        clip = corpus.clip(video_id)
        words = teacher.frame_words(video_id, clip.timestamps.tolist()) if teacher is not None else None
        yield DescribedVideo(clip.frames, clip.timestamps, by_video[video_id], words)


def init_policy(
    out: str,
    engine_dir: str,
    annotations: str | None,
    corpus_file: str | None,
    split: str | None,
    policy_dir: str | None = None,
    align_epochs: int = 30,
    seed: int = 0,
    synthetic_teacher: str | None = None,
    policy_options: dict | None = None,
) -> dict:
    from vsr_model.policy import load_policy
    from vsr_model.policy.composite import CompositeVideoPolicy
    from vsr_model.policy.connector import ConnectorAlignmentConfig, align_connector
    from vsr_train.config import ModelConfig
    from vsr_train.policy_loader import load_vsr_policy

    torch.manual_seed(seed)
    if policy_dir is not None:
        if policy_options:
            raise ValueError("policy options shape a fresh policy; a saved one (--policy) keeps its own")
        policy = load_policy(policy_dir)
    else:
        from vsr_model.config import config_from_dict
        from vsr_model.policy.composite import CompositePolicyConfig
        from vsr_train.config import FreshPolicy

        composite = config_from_dict(CompositePolicyConfig, dict(policy_options or {}), "--policy-options")
        model = ModelConfig(kind="vsr_policy", fresh=FreshPolicy(composite=composite))
        policy = load_vsr_policy(model, {}, "fp32", engine_dir).model
    report = None
    if align_epochs > 0:
        if not isinstance(policy, CompositeVideoPolicy):
            raise ValueError(f"connector alignment is for the composite policy, not {type(policy).__name__}")
        if annotations is None or corpus_file is None:
            raise ValueError("connector alignment needs --annotations and --corpus (or --align-epochs 0)")
        from vsr_model.data.teacher import SyntheticTeacher

        teacher = SyntheticTeacher(synthetic_teacher) if synthetic_teacher else None
        config = ConnectorAlignmentConfig(epochs=align_epochs, seed=seed)
        videos = described_videos(annotations, corpus_file, split, teacher=teacher)
        report = align_connector(policy, videos, config)
    policy.save_pretrained(Path(out))
    return {"policy": out, "alignment": None if report is None else asdict(report)}
