"""Connector alignment: the connector learns to turn frames into the words that describe them (per frame
token), and nothing else in the policy changes."""

import numpy as np
import pytest
import torch
from test_policy_fakes import FakeEngine, tiny_composite_policy, tiny_llama, tiny_tokenizer
from torch import nn

from vsr_model.policy.composite import CompositePolicyConfig, CompositeVideoPolicy, with_motion
from vsr_model.policy.connector import (
    ConnectorAlignmentConfig,
    DescribedVideo,
    align_connector,
    caption_words,
    frame_targets,
)

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240)}


def solid_video(colours: list[str], seed: int, teacher: bool = True) -> DescribedVideo:
    """One frame per second; each colour fills 2 s and is described by its own moment (and, with
    `teacher`, each frame by [colour, "square"])."""
    rng = np.random.default_rng(seed)
    frames, moments, words = [], [], []
    for k, name in enumerate(colours):
        for _ in range(2):
            frame = np.empty((32, 32, 3), np.uint8)
            frame[:] = COLOURS[name]
            frames.append(np.clip(frame + rng.integers(-10, 10, frame.shape), 0, 255).astype(np.uint8))
            words.append([name, "square"])
        moments.append((2.0 * k, 2.0 * k + 1.5, f"a {name} square grows"))
    times = np.arange(len(frames), dtype=float) + 0.25
    return DescribedVideo(np.stack(frames), times, moments, words if teacher else None)


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=10, embed_dim=16)


class MeanColourEncoder(nn.Module):
    """A frame's mean colour: features that tell the test's solid colours apart (a random CNN may not)."""

    feature_dim = 3

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float().mean(dim=(1, 2)) / 255.0 - 0.5


def colour_policy(engine, connector: str, temporal: bool = False) -> CompositeVideoPolicy:
    base = tiny_composite_policy(engine, hidden=48, num_latents=2)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = CompositePolicyConfig(
        llm="tiny",
        frame_encoder="tiny",
        frame_size=32,
        tokens_per_frame=2,
        connector=connector,
        temporal_context=temporal,
    )
    return CompositeVideoPolicy(
        tiny_llama(len(tokenizer) + 2, hidden=48), tokenizer, MeanColourEncoder(), config, base.sqr.config
    ).eval()


def training_videos() -> list[DescribedVideo]:
    palette = list(COLOURS)
    return [solid_video([palette[(i + j) % 3] for j in range(3)], seed=i) for i in range(12)]


@pytest.mark.parametrize("connector", ["vocabulary", "mlp"])
def test_alignment_turns_frames_into_their_words_and_touches_only_the_connector(engine, connector):
    policy = colour_policy(engine, connector, temporal=True)
    before = {k: v.clone() for k, v in policy.state_dict().items() if not k.startswith("projector.")}
    report = align_connector(
        policy, training_videos(), ConnectorAlignmentConfig(epochs=150, lr=3e-3, held_out=0.25)
    )
    assert report.loss_after < 0.3 * report.loss_before
    assert report.held_out_frames > 0 and report.words_per_token == [3, 1]
    assert report.held_out_accuracy[0] == 1.0  # the colour of unseen frames
    after = policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing but the connector moved
    if connector == "vocabulary":
        assert policy.config.connector_words == [["blue", "green", "red"], ["square"]]
        probe = torch.from_numpy(solid_video(["red"], 99).frames)
        with torch.no_grad():
            features = with_motion(policy.frame_encoder(probe), [2])
            logits = policy.projector.slot_logits(features)[0]
        assert logits.argmax(-1).tolist() == [2, 2]  # "red"


def test_vocabulary_policy_saves_and_loads_its_words(engine, tmp_path):
    from vsr_model.policy.composite import CompositeVideoPolicy as Policy

    policy = colour_policy(engine, "vocabulary")
    align_connector(policy, training_videos()[:3], ConnectorAlignmentConfig(epochs=2))
    policy.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p", frame_encoder=MeanColourEncoder())
    assert loaded.config.connector_words == policy.config.connector_words
    probe = torch.from_numpy(solid_video(["green"], 5).frames)
    with torch.no_grad():
        a = policy.frame_tokens(policy.frame_encoder(probe), [2])
        b = loaded.frame_tokens(loaded.frame_encoder(probe), [2])
    assert torch.allclose(a, b, atol=1e-6)


def test_caption_words_pick_the_rare_words_in_order():
    idf = {"a": 0.0, "square": 0.1, "grows": 0.1, "red": 2.0, "fast": 1.5}
    assert caption_words(["a red square grows fast"], 2, idf) == ["red", "fast"]
    assert caption_words(["a red square"], 4, idf) == ["a", "red", "square", "nothing"]
    videos = [solid_video(["red", "blue"], 0, teacher=False)]
    rows = frame_targets(videos, 1)[0]  # frames at 0.25, 1.25, 2.25, 3.25 s; moments 0-1.5 and 2-3.5 s
    assert rows == [["red"], ["red"], ["blue"], ["blue"]]
    gap = DescribedVideo(videos[0].frames[:1], np.array([1.75]), videos[0].moments)
    assert frame_targets([gap], 2)[0] == [["nothing", "nothing"]]


def test_alignment_refuses_data_it_cannot_use(engine):
    policy = colour_policy(engine, "vocabulary")
    video = solid_video(["red"], 0)
    with pytest.raises(ValueError, match="word lists for"):
        align_connector(
            policy,
            [DescribedVideo(video.frames, video.timestamps, video.moments, video.frame_words[:1])],
            ConnectorAlignmentConfig(),
        )
    with pytest.raises(ValueError, match="connector makes 2 tokens"):
        align_connector(
            policy,
            [DescribedVideo(video.frames, video.timestamps, video.moments, [["red"]] * 2)],
            ConnectorAlignmentConfig(),
        )
    with pytest.raises(ValueError, match="no videos"):
        align_connector(policy, [], ConnectorAlignmentConfig())
    with pytest.raises(ValueError, match="epochs"):
        ConnectorAlignmentConfig(epochs=0)
