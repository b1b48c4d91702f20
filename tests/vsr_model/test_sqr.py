"""Soft Query Refinement: initialisations, cached == re-forward rollout, gradients, InfoNCE, negatives."""

import math

import pytest
import torch
from test_policy_fakes import FakeEngine, make_clip, tiny_composite_policy

from vsr_model.config import config_from_dict
from vsr_model.policy.base import VerifyInput
from vsr_model.protocol import format_response
from vsr_model.sqr import (
    InfoNCEConfig,
    NegativeSampler,
    SQRConfig,
    SQRHeads,
    info_nce,
    latent_rollout,
    latent_rollout_reforward,
    prefill,
    refined_query,
    soft_tokens,
)


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=40, embed_dim=32)


@pytest.fixture(scope="module")
def policy(engine):
    policy = tiny_composite_policy(engine, hidden=64, num_latents=4)
    with torch.no_grad():  # the zero-initialised readout would make every latent identical
        torch.manual_seed(1)
        policy.sqr.readout.out.weight.normal_(0, 0.3)
    return policy


def batch_for(policy, tail_after_refine=("", "<|im_end|>")):
    items = [
        VerifyInput("a person opens the door", make_clip(4, seed=0)),
        VerifyInput("a red circle grows quickly", make_clip(7, seed=1, duration=41.0)),
    ]
    completions = [
        format_response("the door opens early", True, (1.0, 5.5)) + tail_after_refine[0],
        format_response("no circle", False) + tail_after_refine[1],
    ]
    return policy.encode(items, completions)


def test_heads_follow_config_dims_and_initialisation():
    cfg = SQRConfig(embed_dim=20, query_input_dim=24, num_latents=3)
    heads = SQRHeads(48, cfg)
    assert heads.readout.proj.weight.shape == (20, 48) and heads.readout.out.weight.shape == (20, 20)
    assert heads.rollin.proj.weight.shape == (48, 20) and heads.append.proj.weight.shape == (24, 20)
    assert (
        torch.count_nonzero(heads.readout.out.weight) == 0
        and torch.count_nonzero(heads.readout.out.bias) == 0
    )
    # partial identity: the first min(in, out) coordinates pass through unchanged
    assert torch.equal(heads.rollin.proj.weight[:20], torch.eye(20))
    assert torch.count_nonzero(heads.rollin.proj.weight[20:]) == 0
    x = torch.randn(5, 20)
    assert torch.allclose(heads.append(x)[:, :20], torch.nn.functional.layer_norm(x, (20,)), atol=1e-6)
    assert torch.count_nonzero(heads.append(x)[:, 20:]) == 0
    # zero-initialised readout: the first refinement leaves nothing but the bias
    assert torch.count_nonzero(heads.readout(torch.randn(3, 48))) == 0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="embed_dim"):
        SQRConfig(embed_dim=0, query_input_dim=4)
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(SQRConfig, {"embed_dim": 4, "query_input_dim": 4, "latents": 8})
    with pytest.raises(ValueError, match="ambiguity_threshold"):
        InfoNCEConfig(ambiguity_threshold=2.0)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCEConfig(temperature=0.0)
    # InfoNCE settings an older saved policy carried are dropped, not refused
    old = {
        "embed_dim": 4,
        "query_input_dim": 4,
        "num_negatives": 24,
        "temperature": 0.1,
        "infonce_weight": 0.3,
    }
    assert SQRConfig.from_saved(old) == SQRConfig(embed_dim=4, query_input_dim=4, append_mode="plain")


def test_cached_rollout_equals_full_reforward(policy):
    batch = batch_for(policy)
    assert batch.refine_index[0] != batch.refine_index[1]  # row 1 has a token after <REFINE>
    with torch.no_grad():
        cached = latent_rollout(policy, batch, num_latents=6)
        reference = latent_rollout_reforward(policy, batch, num_latents=6)
    assert cached.latents.shape == (2, 6, 32)
    assert torch.allclose(cached.latents, reference.latents, atol=1e-4, rtol=1e-4)
    # the latents really differ from step to step (the roll-in feeds back)
    assert (cached.latents[:, 1:] - cached.latents[:, :-1]).abs().max() > 1e-3


def test_tokens_after_refine_do_not_change_the_latents(policy):
    with torch.no_grad():
        clean = latent_rollout(policy, batch_for(policy, ("", ""))).latents
        noisy = latent_rollout(policy, batch_for(policy, (" trailing words", "<|im_end|> more"))).latents
    assert torch.allclose(clean, noisy, atol=1e-4)


def test_rollout_reuses_a_teacher_forced_prefill(policy):
    batch = batch_for(policy)
    with torch.no_grad():
        state = prefill(policy, batch)
        reused = latent_rollout(policy, batch, state=state).latents
        fresh = latent_rollout(policy, batch).latents
    assert torch.allclose(reused, fresh, atol=1e-5)


def test_gradients_reach_projectors_policy_and_frames(policy, engine):
    policy.zero_grad(set_to_none=True)
    batch = batch_for(policy)
    latents = latent_rollout(policy, batch).latents
    query, tokens = refined_query(policy.sqr, engine, ["a person opens the door", "a red circle"], latents)
    assert tokens.shape == (2, 4, engine.query_input_dim)
    positive = engine.video_embeddings(["v0", "v1"])
    negatives = engine.video_embeddings([f"v{i}" for i in range(2, 12)]).reshape(2, 5, -1)
    info_nce(query, positive, negatives).backward()
    for name, module in [
        ("readout", policy.sqr.readout),
        ("rollin", policy.sqr.rollin),
        ("append", policy.sqr.append),
        ("llm", policy.lm.get_decoder().layers[0]),
        ("frame projector", policy.projector),
    ]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert all(p.grad is None for p in policy.frame_encoder.parameters())  # frozen
    policy.zero_grad(set_to_none=True)


def test_rollout_without_refine_is_a_clear_error(policy):
    items = [VerifyInput("a person opens the door", make_clip(3))]
    batch = policy.encode(items, ["<think>x</think><answer>matched</answer>"])
    with pytest.raises(ValueError, match="missing in rows \\[0\\]"):
        latent_rollout(policy, batch)


def test_accumulated_soft_tokens_are_prepended(policy, engine):
    latents = torch.randn(2, 4, 32)
    _, first = refined_query(policy.sqr, engine, ["q one", "q two"], latents)
    emb, both = refined_query(policy.sqr, engine, ["q one", "q two"], latents * 2, previous_soft_tokens=first)
    assert both.shape == (2, 8, engine.query_input_dim) and torch.equal(both[:, :4], first)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match=r"latents must be \(B, N, 32\)"):
        soft_tokens(policy.sqr, torch.randn(2, 4, 31))


def test_engine_dimension_mismatch_is_named(policy):
    other = SQRHeads(64, SQRConfig(embed_dim=16, query_input_dim=8))
    with pytest.raises(ValueError, match="D=16, H_e=8"):
        refined_query(other, FakeEngineDims(), ["q"], torch.randn(1, 2, 16))


class FakeEngineDims:
    embed_dim = 32
    query_input_dim = 32


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.6, 0.8]])
    neg = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])
    logits = torch.tensor([0.6, 1.0, 0.0]) / 0.1
    expected = -(logits[0] - torch.logsumexp(logits, 0))
    assert info_nce(q, pos, neg, 0.1).item() == pytest.approx(expected.item(), rel=1e-5)
    assert info_nce(q * 7, pos, neg, 0.1).item() == pytest.approx(expected.item(), rel=1e-5)  # cosine
    with pytest.raises(ValueError, match="non-finite"):
        info_nce(torch.tensor([[math.nan, 0.0]]), pos, neg)


def test_negative_sampler_order_fill_and_ambiguity(engine):
    ids = engine.video_ids
    sampler = NegativeSampler(ids, num_negatives=6, embed_videos=engine.video_embeddings, seed=3)
    rows = sampler.sample_ids(["v0", "v1"], ["v5", "v1"], [["v7", "v0", "v8"], []])
    assert rows[0][:3] == ["v5", "v7", "v8"]  # retrieved top-1 first, then hard negatives, positive dropped
    for positive, row in zip(["v0", "v1"], rows, strict=True):
        assert len(row) == 6 and len(set(row)) == 6 and positive not in row and set(row) <= set(ids)
    pos, neg, _ = sampler.sample(["v0"], [None])
    assert pos.shape == (1, 32) and neg.shape == (1, 6, 32)
    # ambiguity: make v9 a near-duplicate of v0 and check it is never a negative
    emb = engine.video_embeddings(ids).clone()
    emb[9] = emb[0] + 1e-3
    lookup = dict(zip(ids, emb, strict=True))
    strict = NegativeSampler(
        ids, 6, lambda vs: torch.stack([lookup[v] for v in vs]), ambiguity_threshold=0.99
    )
    for _ in range(20):
        assert "v9" not in strict.sample_ids(["v0"], ["v9"], [["v9"]])[0]
    with pytest.raises(ValueError, match="need at least 41 distinct videos"):
        NegativeSampler(ids, 40, engine.video_embeddings)


def test_one_sft_step_trains_policy_and_heads_through_one_forward(engine):
    """CE on the completion + lambda * InfoNCE from a single teacher-forced forward, as SFT runs it."""
    policy = tiny_composite_policy(engine, hidden=64, num_latents=3, seed=7).train()
    batch = batch_for(policy)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    out = policy(batch)
    targets = batch.input_ids[:, 1:].masked_fill(~batch.completion_mask[:, 1:], -100)
    ce = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    latents = latent_rollout(policy, batch, state=out.state).latents
    query, _ = refined_query(policy.sqr, engine, ["a person opens the door", "a red circle"], latents)
    negatives = engine.video_embeddings([f"v{i}" for i in range(2, 8)]).reshape(2, 3, -1)
    loss = ce + InfoNCEConfig().weight * info_nce(query, engine.video_embeddings(["v0", "v1"]), negatives)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(n.startswith("sqr.readout.out") for n in changed)  # zero-init layer learns first
    assert any(n.startswith("lm.") for n in changed) and any(n.startswith("projector.") for n in changed)
    assert not any(n.startswith("frame_encoder.") for n in changed)


def test_bf16_policy_with_fp32_heads(engine):
    policy = tiny_composite_policy(engine, hidden=64, num_latents=3, seed=2)
    policy.lm.to(torch.bfloat16)
    with torch.no_grad():
        policy.sqr.readout.out.weight.normal_(0, 0.3)
        batch = batch_for(policy)
        cached = latent_rollout(policy, batch).latents
        reference = latent_rollout_reforward(policy, batch).latents
    assert cached.dtype == torch.float32 and torch.isfinite(cached).all()
    assert torch.allclose(cached, reference, atol=0.1)
    query, _ = refined_query(policy.sqr, engine, ["a", "b"], cached)
    assert query.shape == (2, engine.embed_dim)


def test_gradient_checkpointing_falls_back_to_exact_reforward(engine, caplog):
    policy = tiny_composite_policy(engine, hidden=64, num_latents=3, seed=3)
    with torch.no_grad():
        policy.sqr.readout.out.weight.normal_(0, 0.3)
        expected = latent_rollout_reforward(policy, batch_for(policy)).latents
    policy.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    with caplog.at_level("WARNING", logger="vsr_model.sqr"):
        latents = latent_rollout(policy, batch_for(policy)).latents
    assert "falls back to re-forwarding" in caplog.text
    assert torch.allclose(latents, expected, atol=1e-4)
    latents.sum().backward()
    assert policy.sqr.rollin.proj.weight.grad is not None


def fresh_heads_policy(engine, append_mode="residual"):
    """A tiny policy whose SQR heads are as built (zero-initialised readout) in the given append mode."""
    policy = tiny_composite_policy(engine, hidden=64, num_latents=4, seed=5)
    config = SQRConfig(
        embed_dim=engine.embed_dim,
        query_input_dim=engine.query_input_dim,
        num_latents=4,
        append_mode=append_mode,
    )
    policy.sqr = SQRHeads(64, config)
    return policy


def test_residual_refinement_starts_as_the_original_query_and_plain_append_does_not(engine):
    texts = ["a person opens the door", "a red circle"]
    original = engine.encode_query(texts)
    for mode, identical in (("residual", True), ("plain", False)):
        policy = fresh_heads_policy(engine, mode)
        with torch.no_grad():
            latents = latent_rollout(policy, batch_for(policy)).latents
            refined, tokens = refined_query(policy.sqr, engine, texts, latents)
        assert torch.count_nonzero(tokens) == 0  # zero-initialised readout: zero soft tokens
        cosine = torch.nn.functional.cosine_similarity(refined, original, dim=-1)
        if identical:
            assert cosine.min() >= 0.9999
        else:  # zero vectors appended to a mean-pooled encoder still move the query
            assert cosine.max() < 0.999


def test_residual_refinement_is_the_identity_on_real_queries_of_the_default_engine():
    from vsr_model.backbones import load_text_encoder
    from vsr_model.engine.query import BertQueryEncoder

    tokenizer, model = load_text_encoder()
    encoder = BertQueryEncoder(tokenizer, model)

    class MiniLMQueries:
        embed_dim = query_input_dim = encoder.hidden_size

        def encode_query(self, texts, soft_tokens=None):
            return encoder(texts, soft_tokens)

    queries = MiniLMQueries()
    texts = [
        "A small red circle moves to the right on a grass background",
        "against a navy backdrop one huge cyan star twirls",
        "the person puts the cup on the table",
    ]
    config = SQRConfig(embed_dim=queries.embed_dim, query_input_dim=queries.query_input_dim, num_latents=8)
    heads = SQRHeads(64, config)
    with torch.no_grad():
        latents = heads.read(torch.randn(3, 64)).unsqueeze(1).expand(3, 8, -1).contiguous()
        refined, _ = refined_query(heads, queries, texts, latents)
        plain = queries.encode_query(texts, soft_tokens=soft_tokens(heads, latents))
    original = queries.encode_query(texts)
    assert torch.nn.functional.cosine_similarity(refined, original, dim=-1).min() >= 0.9999
    # the plain append of the same (zero) tokens damages the query, as measured in the default engine
    assert torch.nn.functional.cosine_similarity(plain, original, dim=-1).max() < 0.9


def test_info_nce_of_the_residual_refinement_starts_at_the_original_query_and_goes_down(engine):
    policy = fresh_heads_policy(engine)
    texts = ["a person opens the door", "a red circle"]
    positive = engine.video_embeddings(["v0", "v1"])
    negatives = engine.video_embeddings([f"v{i}" for i in range(2, 12)]).reshape(2, 5, -1)
    baseline = info_nce(engine.encode_query(texts), positive, negatives).item()
    batch = batch_for(policy)
    optimizer = torch.optim.Adam(policy.sqr.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        latents = latent_rollout(policy, batch, state=prefill(policy, batch)).latents
        query, _ = refined_query(policy.sqr, engine, texts, latents)
        loss = info_nce(query, positive, negatives)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[0] == pytest.approx(baseline, abs=1e-5)
    assert min(losses[-5:]) < baseline - 0.1


def test_append_mode_is_checked_and_saved_policies_without_it_load_as_plain():
    with pytest.raises(ValueError, match="append_mode"):
        SQRConfig(embed_dim=4, query_input_dim=4, append_mode="gated")
    assert SQRConfig.from_saved({"embed_dim": 4, "query_input_dim": 4}).append_mode == "plain"
    assert SQRConfig(embed_dim=4, query_input_dim=4).append_mode == "residual"
