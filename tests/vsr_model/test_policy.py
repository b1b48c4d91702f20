"""The policy interface on the composite family: prompts with true timestamps, batching, generation,
save/load with SQR heads, and clear errors on bad input."""

import numpy as np
import pytest
import torch
from test_policy_fakes import Clip, FakeEngine, make_clip, tiny_composite_policy

from vsr_model.backbones import tiny_frame_encoder
from vsr_model.policy import GenerationSettings, VerifyInput, load_policy
from vsr_model.policy.composite import FRAME_TOKEN, CompositeVideoPolicy, frame_timeline
from vsr_model.protocol import REFINE_TOKEN, format_response
from vsr_model.sqr import latent_rollout


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=30, embed_dim=24)


@pytest.fixture(scope="module")
def policy(engine):
    return tiny_composite_policy(engine, hidden=48, num_latents=3)


def test_prompt_carries_true_timestamps_and_one_token_per_frame(policy):
    # sparse, irregular sampling of a long video: times must be the real ones, not indices
    times = np.array([0.0, 37.5, 80.25, 199.0])
    clip = Clip(np.zeros((4, 20, 30, 3), np.uint8), times, 200.0)
    batch = policy.encode([VerifyInput("a person opens the door", clip)])
    text = policy.tokenizer.decode(batch.input_ids[0])
    assert frame_timeline(times) in text and "80.2s<|frame|>" in text and "199.0s<|frame|>" in text
    assert int((batch.input_ids == policy.frame_token_id).sum()) == 4
    assert "a person opens the door" in text and "200.0 seconds" in text
    assert batch.model_inputs["frames"].shape == (4, 32, 32, 3)


def test_batch_is_left_padded_with_completion_mask_and_refine_index(policy):
    items = [
        VerifyInput("short", make_clip(2)),
        VerifyInput("a much longer query text here", make_clip(5, 1)),
    ]
    completions = [format_response("yes", True, (1.0, 2.0)), format_response("no", False) + "<|im_end|>"]
    batch = policy.encode(items, completions)
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[0, 0]
    assert torch.equal(
        batch.position_ids[0][batch.attention_mask[0].bool()],
        torch.arange(int(batch.attention_mask[0].sum())),
    )
    for i in range(2):
        assert batch.input_ids[i, batch.refine_index[i]] == policy.refine_token_id
        completion = policy.tokenizer.decode(batch.input_ids[i][batch.completion_mask[i]])
        assert completion.startswith("<think>") and REFINE_TOKEN in completion
    assert batch.refine_index[1] == batch.input_ids.shape[1] - 2  # <|im_end|> follows <REFINE>
    assert policy.encode(items).refine_index.tolist() == [-1, -1]


def test_embedded_frames_replace_the_frame_tokens(policy):
    batch = policy.encode([VerifyInput("q", make_clip(3))])
    with torch.no_grad():
        embeds = policy.embed_inputs(batch)
        features = policy.projector(policy.frame_encoder(batch.model_inputs["frames"]))
    slots = batch.input_ids[0] == policy.frame_token_id
    assert torch.allclose(embeds[0, slots], features, atol=1e-6)
    token_rows = policy.get_input_embeddings()(batch.input_ids[0, ~slots])
    assert torch.equal(embeds[0, ~slots], token_rows)


def test_frame_feature_memo_encodes_each_frame_once_and_changes_nothing(engine):
    policy = tiny_composite_policy(engine, hidden=48, num_latents=3)
    calls = []
    policy.frame_encoder.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    first, second = make_clip(3, seed=1), make_clip(2, seed=2)
    # the second item repeats the first clip's frames plus two new ones
    repeated = Clip(np.concatenate([first.frames, second.frames]), np.arange(5.0), 10.0)
    batch = policy.encode([VerifyInput("q", first), VerifyInput("another", repeated)])
    with torch.no_grad():
        memo_embeds = policy.embed_inputs(batch)
        assert calls == [5]  # 8 frames in the batch, 5 distinct
        again = policy.embed_inputs(batch)
        assert calls == [5] and policy.frame_memo.hits == 3 + 8
        policy.frame_memo = None
        direct = policy.embed_inputs(batch)
    assert calls == [5, 8]
    assert torch.allclose(memo_embeds, direct, atol=1e-5) and torch.equal(memo_embeds, again)


def test_frame_feature_memo_drops_the_least_recently_used_frames(engine):
    from vsr_model.policy.composite import FrameFeatureMemo

    encoder = tiny_frame_encoder(image_size=32).eval()
    memo = FrameFeatureMemo(max_frames=4)
    frames = torch.from_numpy(make_clip(6, seed=3, size=32).frames[:, :, :32].copy())
    memo.encode(encoder, frames[:4])
    memo.encode(encoder, frames[0:1])  # frame 0 becomes the most recent
    memo.encode(encoder, frames[4:6])  # evicts frames 1 and 2
    assert len(memo) == 4
    misses = memo.misses
    memo.encode(encoder, frames[[0, 3, 4, 5]])
    assert memo.misses == misses
    memo.encode(encoder, frames[1:2])
    assert memo.misses == misses + 1
    assert not FrameFeatureMemo.usable(encoder.train(), frames)


def test_generation_stops_at_refine_or_eos(policy):
    batch = policy.encode([VerifyInput("q", make_clip(2)), VerifyInput("another query", make_clip(3, 2))])
    out = policy.generate(batch, GenerationSettings(max_new_tokens=12, do_sample=True, temperature=2.0))
    stops = {policy.refine_token_id, policy.tokenizer.eos_token_id}
    for ids, text in zip(out.token_ids, out.texts, strict=True):
        assert 1 <= len(ids) <= 12
        assert all(t not in stops for t in ids[:-1])
        if ids[-1] == policy.refine_token_id:
            assert text.endswith(REFINE_TOKEN)


def test_save_and_load_round_trip_including_sqr_heads(policy, tmp_path):
    with torch.no_grad():
        policy.sqr.readout.out.weight.normal_(0, 0.2)
        policy.projector.trunk[0].bias.normal_()
    target = tmp_path / "ckpt"
    policy.save_pretrained(target)
    policy.save_pretrained(target)  # overwriting an existing checkpoint is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded = load_policy(target, frame_encoder=tiny_frame_encoder(image_size=32, seed=5)).eval()
    assert isinstance(loaded, CompositeVideoPolicy)
    items = [VerifyInput("a person opens the door", make_clip(3))]
    comp = [format_response("no", False)]
    with torch.no_grad():
        a = latent_rollout(policy, policy.encode(items, comp)).latents
        b = latent_rollout(loaded, loaded.encode(items, comp)).latents
    assert torch.allclose(a, b, atol=1e-6)
    assert loaded.sqr.config == policy.sqr.config
    for name, tensor in policy.sqr.state_dict().items():
        assert torch.equal(tensor, loaded.sqr.state_dict()[name]), name


def test_bad_inputs_are_named(policy):
    with pytest.raises(ValueError, match="uint8"):
        policy.encode([VerifyInput("q", Clip(np.zeros((2, 8, 8, 3), np.float32), np.array([0.0, 1.0]), 2.0))])
    with pytest.raises(ValueError, match="timestamps must be"):
        policy.encode([VerifyInput("q", Clip(np.zeros((2, 8, 8, 3), np.uint8), np.array([0.0]), 2.0))])
    with pytest.raises(ValueError, match="finite, non-negative and non-decreasing"):
        policy.encode(
            [VerifyInput("q", Clip(np.zeros((2, 8, 8, 3), np.uint8), np.array([1.0, np.nan]), 2.0))]
        )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        policy.encode([VerifyInput("q", make_clip(2))], [[1, 2, 10**7]])
    with pytest.raises(ValueError, match="2 completions for 1 prompts"):
        policy.encode([VerifyInput("q", make_clip(2))], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        policy.encode([VerifyInput("  ", make_clip(2))])
    with pytest.raises(FileNotFoundError, match=r"vsr_policy\.json"):
        load_policy("/nonexistent/dir")


def test_frame_token_is_special(policy):
    ids = policy.tokenizer.encode(FRAME_TOKEN + REFINE_TOKEN, add_special_tokens=False)
    assert ids == [policy.frame_token_id, policy.refine_token_id]


@pytest.mark.slow
def test_default_composite_loads_smollm2_and_efficientnet(engine, tmp_path):
    from vsr_model.policy.composite import CompositePolicyConfig
    from vsr_model.sqr import SQRConfig

    config = CompositePolicyConfig(frame_size=64)
    sqr = SQRConfig(embed_dim=engine.embed_dim, query_input_dim=engine.query_input_dim, num_latents=2)
    policy = CompositeVideoPolicy.build(config, sqr).eval()
    assert policy.hidden_size == 576 and policy.sqr.readout.proj.in_features == 576
    items = [VerifyInput("a person opens the door", make_clip(2, size=64))]
    batch = policy.encode(items, [format_response("no", False)])
    with torch.no_grad():
        latents = latent_rollout(policy, batch).latents
    assert latents.shape == (1, 2, engine.embed_dim) and torch.isfinite(latents).all()
    out = policy.generate(policy.encode(items), GenerationSettings(max_new_tokens=4))
    assert len(out.token_ids[0]) <= 4
    # The LLM comes from a GGUF file; a trained policy must still save and reload (training
    # checkpoints do exactly this) with identical outputs.
    policy.save_pretrained(tmp_path / "policy")
    reloaded = load_policy(tmp_path / "policy").eval()
    with torch.no_grad():
        again = latent_rollout(reloaded, reloaded.encode(items, [format_response("no", False)])).latents
    torch.testing.assert_close(again, latents)


def test_greedy_generation_agrees_with_teacher_forced_forward_under_padding(policy):
    """Sampling and training must see the same positions and masks, or GRPO's ratios are wrong."""
    items = [
        VerifyInput("q", make_clip(2)),
        VerifyInput("a much longer query about a red circle", make_clip(5, 3)),
    ]
    out = policy.generate(policy.encode(items), GenerationSettings(max_new_tokens=6))
    batch = policy.encode(items, out.token_ids)
    with torch.no_grad():
        logits = policy(batch, use_cache=False).logits
    for i, ids in enumerate(out.token_ids):
        start = batch.input_ids.shape[1] - len(ids)
        predicted = logits[i, start - 1 : start - 1 + len(ids)].argmax(-1).tolist()
        assert predicted == ids


def test_frozen_frame_encoder_stays_in_eval_mode(policy):
    policy.train()
    try:
        assert policy.lm.training and policy.projector.training and not policy.frame_encoder.training
        assert not any(m.training for m in policy.frame_encoder.modules())
    finally:
        policy.eval()


def test_group_sampling_returns_group_size_rows_per_prompt(policy):
    torch.manual_seed(0)
    items = [VerifyInput("q", make_clip(2)), VerifyInput("another query", make_clip(3, 2))]
    settings = GenerationSettings(max_new_tokens=5, do_sample=True, temperature=1.5, num_return_sequences=3)
    out = policy.generate(policy.encode(items), settings)
    assert len(out.token_ids) == 6 and len(out.texts) == 6
    assert len({tuple(ids) for ids in out.token_ids[:3]}) > 1  # sampled, not copies


def test_text_targets_end_like_generation(policy):
    soft = policy.completion_ids(format_response("no", False))
    hard = policy.completion_ids(format_response("no", False, mode="hard", rewritten_query="a dog"))
    assert soft[-1] == policy.refine_token_id and policy.tokenizer.eos_token_id not in soft
    assert hard[-1] == policy.tokenizer.eos_token_id
    assert policy.completion_ids("x<|im_end|>").count(policy.tokenizer.eos_token_id) == 1


@pytest.mark.parametrize("spare_rows", [0, 8])
def test_a_new_refine_token_starts_as_the_end_of_turn_token(spare_rows):
    from test_policy_fakes import tiny_llama, tiny_tokenizer

    from vsr_model.policy.base import add_policy_tokens

    # spare_rows: a checkpoint whose embeddings are padded beyond its tokenizer (no resize needed).
    tokenizer = tiny_tokenizer()
    lm = tiny_llama(len(tokenizer) + spare_rows)
    add_policy_tokens(tokenizer, lm, extra_tokens=(FRAME_TOKEN,))
    refine, eos = tokenizer.convert_tokens_to_ids(REFINE_TOKEN), tokenizer.eos_token_id
    assert lm.get_input_embeddings().weight.shape[0] == max(len(tokenizer), len(tokenizer) - 2 + spare_rows)
    for table in (lm.get_input_embeddings(), lm.get_output_embeddings()):
        assert torch.equal(table.weight[refine], table.weight[eos])
    # Growing again is a no-op: a loaded policy keeps its trained rows.
    with torch.no_grad():
        lm.get_input_embeddings().weight[refine] += 1.0
    trained = lm.get_input_embeddings().weight[refine].clone()
    add_policy_tokens(tokenizer, lm, extra_tokens=(FRAME_TOKEN,))
    assert torch.equal(lm.get_input_embeddings().weight[refine], trained)
