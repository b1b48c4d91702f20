"""Properties of the GRPO objective (vsr_train.grpo_math)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsr_train.grpo_math import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    mask_after_eos,
    segments_mask,
    token_logprobs,
)

finite = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(2, 8), st.data())
def test_advantages_sum_to_zero_per_group(num_groups, group_size, data):
    values = data.draw(st.lists(finite, min_size=num_groups * group_size, max_size=num_groups * group_size))
    rewards = torch.tensor(values, dtype=torch.float64)
    for scale in (True, False):
        adv = group_advantages(rewards, group_size, scale_rewards=scale)
        sums = adv.view(num_groups, group_size).sum(dim=1)
        assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-6)


def test_advantages_are_standardised_and_order_preserving():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, 4, scale_rewards=True, eps=0.0 + 1e-12)
    first = adv[:4]
    assert torch.allclose(first.std(), torch.tensor(1.0), atol=1e-5)
    assert torch.all(first[1:] > first[:-1])
    # A group with identical rewards carries no signal.
    assert torch.all(adv[4:] == 0)
    unscaled = group_advantages(rewards, 4, scale_rewards=False)
    assert torch.allclose(unscaled[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]))


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=16))
def test_k3_is_nonnegative_with_zero_value_and_gradient_at_reference(values):
    ref = torch.tensor(values, dtype=torch.float64)
    logp = ref.clone().requires_grad_(True)
    kl = k3_kl(logp, ref)
    assert torch.all(kl.abs() < 1e-12)
    kl.sum().backward()
    assert torch.all(logp.grad.abs() < 1e-12)
    # Away from the reference the estimator is strictly positive.
    shifted = k3_kl(ref + 0.5, ref)
    assert torch.all(shifted > 0)


def test_k3_matches_true_kl_in_expectation():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(6), torch.randn(6)
    logp, logq = torch.log_softmax(p_logits, 0), torch.log_softmax(q_logits, 0)
    exact = torch.sum(logp.exp() * (logp - logq))
    # E_{x~p}[k3] = KL(p||q) exactly; compute the expectation by enumeration.
    expectation = torch.sum(logp.exp() * k3_kl(logp, logq))
    assert torch.allclose(expectation, exact, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_clipped_surrogate_bounds_and_gradient(log_ratio, adv, eps_low, eps_high):
    logp = torch.tensor([[log_ratio]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    advantage = torch.tensor([adv], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, old, advantage, eps_low, eps_high)
    ratio = math.exp(log_ratio)
    # The objective never exceeds the clipped value: min(r*A, clip(r)*A).
    bounded = min(ratio * adv, min(max(ratio, 1 - eps_low), 1 + eps_high) * adv)
    assert loss.item() == pytest.approx(-bounded, rel=1e-9, abs=1e-12)
    loss.sum().backward()
    if clipped.item() == 1.0:
        assert logp.grad.item() == 0.0
        assert (ratio > 1 + eps_high and adv > 0) or (ratio < 1 - eps_low and adv < 0)
    else:
        # Inside the trust region the gradient is that of -r*A.
        assert logp.grad.item() == pytest.approx(-ratio * adv, rel=1e-9, abs=1e-12)


def test_loss_type_normalisations():
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    # grpo: each sequence's token mean (1 and 4), then the batch mean.
    assert aggregate_loss(per_token, mask, "grpo").item() == pytest.approx(2.5)
    # dapo: all tokens weigh alike: (4 + 4) / 5 tokens.
    assert aggregate_loss(per_token, mask, "dapo").item() == pytest.approx(8 / 5)
    assert aggregate_loss(per_token, mask, "dapo", total_tokens=16).item() == pytest.approx(8 / 16)
    # dr_grpo: constant normaliser num_sequences * max_tokens.
    assert aggregate_loss(per_token, mask, "dr_grpo", max_completion_tokens=10).item() == pytest.approx(
        8 / 20
    )
    with pytest.raises(ValueError, match="max_completion_tokens"):
        aggregate_loss(per_token, mask, "dr_grpo")
    with pytest.raises(ValueError, match="unknown loss_type"):
        aggregate_loss(per_token, mask, "ppo")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_masked_tokens_get_no_gradient(num_seq, num_tok, data):
    mask = torch.tensor(
        data.draw(st.lists(st.integers(0, 1), min_size=num_seq * num_tok, max_size=num_seq * num_tok))
    )
    mask = mask.view(num_seq, num_tok)
    logp = (torch.randn(num_seq, num_tok, dtype=torch.float64) * 0.1).requires_grad_(True)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        logp.grad = None
        out = grpo_loss(
            logp,
            logp.detach(),
            torch.zeros(num_seq, num_tok, dtype=torch.float64),
            torch.randn(num_seq, dtype=torch.float64),
            mask,
            beta=0.1,
            clip_eps_low=0.2,
            clip_eps_high=None,
            loss_type=loss_type,
            max_completion_tokens=num_tok,
        )
        out.loss.backward()
        assert torch.all(logp.grad[mask == 0] == 0)


def test_on_policy_gradient_is_advantage_weighted_score():
    # At ratio 1, no KL: d loss / d logp_t = -A / n_tokens for the grpo loss.
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = grpo_loss(
        logp, logp.detach(), None, adv, mask, beta=0.0, clip_eps_low=0.2, clip_eps_high=None, loss_type="grpo"
    )
    out.loss.backward()
    expected = torch.tensor([[-1 / 3, -1 / 3, -1 / 3], [1.0, 1.0, 0.0]], dtype=torch.float64) / 2
    assert torch.allclose(logp.grad, expected)
    assert out.clip_fraction.item() == 0.0
    assert out.ratio_mean.item() == pytest.approx(1.0)


def test_grpo_loss_rejects_nan():
    logp = torch.tensor([[float("nan")]])
    with pytest.raises(FloatingPointError, match="GRPO loss"):
        grpo_loss(
            logp,
            torch.zeros(1, 1),
            None,
            torch.ones(1),
            torch.ones(1, 1),
            beta=0.0,
            clip_eps_low=0.2,
            clip_eps_high=None,
            loss_type="grpo",
        )


def test_token_logprobs_match_log_softmax_with_temperature():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    got = token_logprobs(logits, targets, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mask_after_eos_and_segments():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert mask_after_eos(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    mask = segments_mask([3, 4, 2], [False, True, False])
    assert mask.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]
