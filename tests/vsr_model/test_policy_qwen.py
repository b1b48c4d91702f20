"""The Qwen2.5-VL / Qwen3-VL policy family on tiny random configs of the real classes."""

import numpy as np
import pytest
import torch
from test_policy_fakes import FakeEngine, make_clip, tiny_qwen_policy

from vsr_model.policy import GenerationSettings, VerifyInput, load_policy
from vsr_model.policy.qwen_frames import PatchLayout, patchify_frames, smart_resize
from vsr_model.protocol import format_response
from vsr_model.sqr import latent_rollout, latent_rollout_reforward


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=20, embed_dim=24)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def policy(request, engine):
    policy = tiny_qwen_policy(request.param, engine)
    with torch.no_grad():
        policy.sqr.readout.out.weight.normal_(0, 0.3)
    return policy


def items():
    return [
        VerifyInput("a person opens the door", make_clip(4, seed=0, size=60)),
        VerifyInput("a red circle grows", make_clip(5, seed=1, duration=33.0)),
    ]


def test_patch_layout_matches_qwen_flattening():
    layout = PatchLayout(14, 2, 2, 1, 10**6, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 56, 84, 3), dtype=np.uint8)
    patches = patchify_frames(frames, np.array([0.0, 10.0, 30.0]), layout)
    assert (patches.grid_t, patches.grid_h, patches.grid_w) == (2, 4, 6)
    assert patches.group_times == [5.0, 30.0]  # the odd last frame is repeated with its own time
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = torch.cat([x, x[-1:]])
    # row of (t=1, merged row 1, merged col 2, inner row 0, inner col 1) in the Qwen order
    t, mh, mw, ih, iw = 1, 1, 2, 0, 1
    row = ((t * 2 + mh) * 3 + mw) * 4 + ih * 2 + iw
    y0, x0 = (mh * 2 + ih) * 14, (mw * 2 + iw) * 14
    expected = x[2 * t : 2 * t + 2, :, y0 : y0 + 14, x0 : x0 + 14].permute(1, 0, 2, 3)
    assert torch.allclose(patches.pixel_values[row].reshape(3, 2, 14, 14), expected, atol=1e-6)


def test_smart_resize_respects_factor_and_budget():
    for h, w in [(240, 320), (1080, 1920), (30, 40), (500, 20)]:
        rh, rw = smart_resize(h, w, 28, 4 * 28 * 28, 64 * 28 * 28)
        assert rh % 28 == 0 and rw % 28 == 0 and 4 * 28 * 28 <= rh * rw <= 64 * 28 * 28
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500, 28, 1, 10**6)


def test_prompt_has_true_times_and_grid(policy):
    clip = make_clip(4, size=60)
    clip.timestamps = np.array([0.0, 2.0, 50.0, 90.0])
    clip.duration = 95.0
    batch = policy.encode([VerifyInput("a person opens the door", clip)])
    text = policy.tokenizer.decode(batch.input_ids[0])
    if policy.model_type == "qwen3_vl":
        assert "<1.0 seconds><|vision_start|>" in text and "<70.0 seconds><|vision_start|>" in text
    else:
        assert "Frame times (seconds): 1.0, 70.0" in text
        assert batch.model_inputs["second_per_grid_ts"].tolist() == [69.0]
    grid = batch.model_inputs["video_grid_thw"][0].tolist()
    assert int((batch.input_ids == policy.video_token_id).sum()) == grid[0] * grid[1] * grid[2] // 4
    assert batch.position_ids.shape == (3, *batch.input_ids.shape)


def test_cached_rollout_equals_reforward(policy):
    comps = [format_response("yes", True, (1.0, 5.0)), format_response("no", False) + "<|im_end|>"]
    batch = policy.encode(items(), comps)
    with torch.no_grad():
        cached = latent_rollout(policy, batch, num_latents=5).latents
        reference = latent_rollout_reforward(policy, batch, num_latents=5).latents
    assert torch.allclose(cached, reference, atol=1e-4, rtol=1e-4)


def test_gradients_reach_vision_and_language_and_heads(policy):
    policy.zero_grad(set_to_none=True)
    batch = policy.encode(items(), [format_response("no", False)] * 2)
    latent_rollout(policy, batch).latents.square().sum().backward()
    vision = policy.model.model.visual
    for module in (
        policy.sqr.readout,
        policy.sqr.rollin,
        policy.model.model.language_model.layers[0],
        vision,
    ):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    policy.zero_grad(set_to_none=True)


def test_generate_and_save_load(policy, tmp_path):
    out = policy.generate(policy.encode(items()), GenerationSettings(max_new_tokens=4))
    assert len(out.texts) == 2 and all(1 <= len(ids) <= 4 for ids in out.token_ids)
    policy.save_pretrained(tmp_path / "qwen")
    loaded = load_policy(tmp_path / "qwen").eval()
    assert loaded.model_type == policy.model_type and loaded.layout == policy.layout
    batch = policy.encode(items(), [format_response("no", False)] * 2)
    with torch.no_grad():
        a = latent_rollout(policy, batch).latents
        b = latent_rollout(loaded, loaded.encode(items(), [format_response("no", False)] * 2)).latents
    assert torch.allclose(a, b, atol=1e-5)


def test_greedy_generation_agrees_with_teacher_forced_forward(policy):
    out = policy.generate(policy.encode(items()), GenerationSettings(max_new_tokens=5))
    batch = policy.encode(items(), out.token_ids)
    with torch.no_grad():
        logits = policy(batch, use_cache=False).logits
    logits[..., policy.suppressed_token_ids] = float("-inf")  # generation never writes a vision token
    for i, ids in enumerate(out.token_ids):
        start = batch.input_ids.shape[1] - len(ids)
        assert logits[i, start - 1 : start - 1 + len(ids)].argmax(-1).tolist() == ids
