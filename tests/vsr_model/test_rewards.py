"""The six rewards on hand-computed cases."""

import math

import pytest
import torch

from vsr_model.config import config_from_dict
from vsr_model.protocol import format_response, parse_response
from vsr_model.rewards import (
    RetrievalRewardKind,
    RewardConfig,
    ground_truth_probability,
    retrieval_reward,
    score_response,
    score_responses,
)

MATCH = parse_response(format_response("it is here", True, (2.0, 6.0)))
REJECT = parse_response(format_response("wrong video", False))
GARBAGE = parse_response("I think so")
UNIT = RewardConfig(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_correct_match_scores_iou_and_all_formats():
    r = score_response(MATCH, True, (4.0, 8.0), UNIT, retrieval=0.25)
    # IoU([2,6],[4,8]) = 2 / 6
    assert r.verification == 1 and r.think_format == 1 and r.time_format == 1 and r.refine_presence == 1
    assert r.temporal_iou == pytest.approx(1 / 3)
    assert r.retrieval == 0.25
    assert r.total == pytest.approx(1 + 1 + 1 + 1 / 3 + 1 + 0.25)


def test_false_match_gets_minus_one_and_no_iou():
    r = score_response(MATCH, False, None, UNIT)
    assert r.verification == -1 and r.temporal_iou == 0 and r.time_format == 1


def test_correct_rejection_gets_half_iou_credit_and_weights_apply():
    cfg = RewardConfig(
        verification=1.5,
        think_format=0.05,
        time_format=0.05,
        temporal_iou=0.4,
        refine_presence=0.1,
        retrieval=0.8,
    )
    r = score_response(REJECT, False, (0.0, 1.0), cfg, retrieval=0.5)
    assert r.temporal_iou == 0.5 and r.verification == 1 and r.time_format == 1
    assert r.total == pytest.approx(1.5 + 0.05 + 0.05 + 0.4 * 0.5 + 0.1 + 0.8 * 0.5)


def test_wrong_rejection_and_garbage():
    r = score_response(REJECT, True, (0.0, 1.0), UNIT)
    assert r.verification == -1 and r.temporal_iou == 0
    g = score_response(GARBAGE, True, (0.0, 1.0), UNIT, retrieval=0.9)
    assert (
        g.verification,
        g.think_format,
        g.time_format,
        g.temporal_iou,
        g.refine_presence,
        g.retrieval,
    ) == (-1, 0, 0, 0, 0, 0)


def test_time_format_needs_span_iff_matched():
    missing = parse_response("<think>x</think><answer>matched</answer><REFINE>")
    assert score_response(missing, True, (0.0, 1.0), UNIT).time_format == 0
    extra = parse_response("<think>x</think><answer>not_matched</answer><start>1</start><end>2</end><REFINE>")
    assert score_response(extra, False, None, UNIT).time_format == 0


def test_retrieval_reward_variants_hand_computed():
    q_ref = torch.tensor([[1.0, 0.0]])
    q_orig = torch.tensor([[0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    # refined: cosines [1, 0, -1] / 0.1 -> softmax first
    p_ref = math.exp(10) / (math.exp(10) + math.exp(0) + math.exp(-10))
    p_orig = math.exp(0) / (math.exp(0) + math.exp(10) + math.exp(0))
    prob = retrieval_reward(q_ref, q_orig, pos, neg, RetrievalRewardKind.PROBABILITY, 0.1)
    gain = retrieval_reward(q_ref, q_orig, pos, neg, "gain", 0.1)
    assert prob.item() == pytest.approx(p_ref, rel=1e-5)
    assert gain.item() == pytest.approx(p_ref - p_orig, rel=1e-5)
    # exp(-InfoNCE) is exactly the probability
    logits = torch.tensor([10.0, 0.0, -10.0])
    assert math.exp(
        -torch.nn.functional.cross_entropy(logits[None], torch.tensor([0])).item()
    ) == pytest.approx(p_ref)


def test_retrieval_probability_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match=r"\(B, n, D\)"):
        ground_truth_probability(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        ground_truth_probability(torch.full((1, 3), float("nan")), torch.ones(1, 3), torch.ones(1, 2, 3), 0.1)


def test_config_validation_and_yaml_style_loading():
    cfg = config_from_dict(RewardConfig, {"verification": 1.2, "retrieval_kind": "gain"})
    assert cfg.retrieval_kind is RetrievalRewardKind.GAIN and cfg.verification == 1.2
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(RewardConfig, {"verfication": 1.0})
    with pytest.raises(ValueError, match="unknown retrieval_kind"):
        RewardConfig(retrieval_kind="best")
    with pytest.raises(ValueError, match="finite"):
        RewardConfig(verification=float("nan"))


def test_batch_scoring_checks_sizes():
    rows = score_responses([MATCH, REJECT], [True, False], [(2.0, 6.0), None], UNIT, torch.tensor([0.1, 0.2]))
    assert rows[0].temporal_iou == 1.0 and rows[1].retrieval == pytest.approx(0.2)
    with pytest.raises(ValueError, match="batch sizes differ"):
        score_responses([MATCH], [True, False], [None], UNIT)
