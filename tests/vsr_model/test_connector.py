"""Connector alignment: the projector learns to put frames near the words that describe them, and
nothing else in the policy changes."""

import numpy as np
import pytest
import torch
from test_policy_fakes import FakeEngine, tiny_composite_policy, tiny_llama, tiny_tokenizer
from torch import nn

from vsr_model.policy.composite import CompositePolicyConfig, CompositeVideoPolicy
from vsr_model.policy.connector import (
    ConnectorAlignmentConfig,
    DescribedVideo,
    align_connector,
    description_embeddings,
)

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240)}


def solid_video(colours: list[str], seed: int) -> DescribedVideo:
    """One frame per second; each colour fills 2 s and is described by its own moment."""
    rng = np.random.default_rng(seed)
    frames, moments = [], []
    for k, name in enumerate(colours):
        for _ in range(2):
            frame = np.empty((32, 32, 3), np.uint8)
            frame[:] = COLOURS[name]
            frames.append(np.clip(frame + rng.integers(-10, 10, frame.shape), 0, 255).astype(np.uint8))
        moments.append((2.0 * k, 2.0 * k + 1.5, f"a {name} square grows"))
    return DescribedVideo(np.stack(frames), np.arange(len(frames), dtype=float) + 0.25, moments)


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=10, embed_dim=16)


class MeanColourEncoder(nn.Module):
    """A frame's mean colour: features that tell the test's solid colours apart (a random CNN may not)."""

    feature_dim = 3

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float().mean(dim=(1, 2)) / 255.0 - 0.5


def colour_policy(engine) -> CompositeVideoPolicy:
    base = tiny_composite_policy(engine, hidden=48, num_latents=2)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    return CompositeVideoPolicy(
        tiny_llama(len(tokenizer) + 2, hidden=48),
        tokenizer,
        MeanColourEncoder(),
        CompositePolicyConfig(llm="tiny", frame_encoder="tiny", frame_size=32),
        base.sqr.config,
    ).eval()


def test_alignment_moves_frames_to_their_descriptions_and_touches_only_the_projector(engine):
    policy = colour_policy(engine)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    videos = [solid_video(["red", "green", "blue"], 0), solid_video(["blue", "red"], 1)]
    report = align_connector(policy, videos, ConnectorAlignmentConfig(steps=300, lr=3e-3))
    assert report.frames == 10 and report.descriptions == 3
    assert report.loss_after < 0.2 * report.loss_before
    assert report.cosine_after > 0.9 > 0.2 > report.cosine_before
    after = policy.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("projector.") for k in changed)

    # a new red frame lands nearer the red description than the blue one
    embeddings = policy.get_input_embeddings().weight.detach()
    red, blue = description_embeddings(
        policy.tokenizer, embeddings, ["a red square grows", "a blue square grows"]
    )
    probe = torch.from_numpy(solid_video(["red"], 7).frames[:1])
    with torch.no_grad():
        projected = policy.projector(policy.frame_encoder(probe))[0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(projected, red, dim=0) > 0.9 > 0.5 > cos(projected, blue, dim=0)


def test_description_targets_weigh_rare_words_and_have_token_scale(engine):
    policy = tiny_composite_policy(engine, hidden=48, num_latents=2)
    embeddings = policy.get_input_embeddings().weight.detach()
    texts = ["a red square grows", "a blue square grows", "a green square grows"]
    targets = description_embeddings(policy.tokenizer, embeddings, texts)
    typical = embeddings.norm(dim=-1).mean()
    assert torch.allclose(targets.norm(dim=-1), typical.expand(3), rtol=1e-5)
    # the shared words pull all three together less than the distinct colour words pull them apart
    plain = torch.stack(
        [embeddings[policy.tokenizer.encode(t, add_special_tokens=False)].mean(0) for t in texts]
    )
    cos = torch.nn.functional.cosine_similarity
    assert cos(targets[0], targets[1], dim=0) < cos(plain[0], plain[1], dim=0)


def test_alignment_refuses_data_it_cannot_use(engine):
    policy = tiny_composite_policy(engine, hidden=48, num_latents=2)
    video = solid_video(["red"], 0)
    outside = DescribedVideo(video.frames, video.timestamps, [(50.0, 60.0, "a red square")])
    with pytest.raises(ValueError, match="no sampled frame falls inside"):
        align_connector(policy, [outside], ConnectorAlignmentConfig(steps=1))
    with pytest.raises(ValueError, match="timestamps"):
        align_connector(
            policy,
            [DescribedVideo(video.frames, video.timestamps[:1], video.moments)],
            ConnectorAlignmentConfig(),
        )
    with pytest.raises(ValueError, match="steps"):
        ConnectorAlignmentConfig(steps=0)
