"""VCMR / VR / VER metrics on hand-computed cases."""

import math

import pytest

from vsr_model.metrics import (
    markdown_table,
    per_turn_table,
    summarize,
    temporal_iou,
    vcmr_at_one,
    vcmr_recall_at_k,
    video_retrieval,
)
from vsr_model.protocol import QueryTrace, TurnTrace, format_response, parse_response


def turn(t, ranking, text, gt):
    return TurnTrace(t, ranking, [0.0] * len(ranking), text, parse_response(text), ranking[0] == gt)


YES = format_response("x", True, (2.0, 6.0))  # IoU with gt (0, 8) = 0.5 ; with (2, 6) = 1
NO = format_response("x", False)


def traces():
    # q1: right video first turn, span (2,6) vs gt (0,8): IoU 0.5
    q1 = QueryTrace("q1", "a", "v1", (0.0, 8.0), [turn(1, ["v1", "v2"], YES, "v1")], ["v1", "v2"])
    # q2: rejects v3, refines, matches v2 (right) with span (2,6) vs gt (2,6): IoU 1
    q2 = QueryTrace(
        "q2",
        "b",
        "v2",
        (2.0, 6.0),
        [turn(1, ["v3", "v2"], NO, "v2"), turn(2, ["v2", "v1"], YES, "v2")],
        ["v2", "v1"],
    )
    # q3: accepts the wrong video at turn 1 (gt ranked 3rd)
    q3 = QueryTrace("q3", "c", "v1", (2.0, 6.0), [turn(1, ["v2", "v3", "v1"], YES, "v1")], ["v2", "v3", "v1"])
    # q4: garbage at turn 1, rejects at turn 2; post-refinement ranking has gt first
    q4 = QueryTrace(
        "q4",
        "d",
        "v4",
        (1.0, 2.0),
        [turn(1, ["v5"], "garbage", "v4"), turn(2, ["v6", "v4"], NO, "v4")],
        ["v4", "v6"],
    )
    return [q1, q2, q3, q4]


def test_temporal_iou_cases():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (2, 3)) == 0
    assert temporal_iou((2, 2), (2, 2)) == 1
    assert temporal_iou(None, (0, 1)) == 0
    assert temporal_iou((3, 1), (0, 5)) == 0
    with pytest.raises(ValueError, match="non-finite"):
        temporal_iou((0, math.nan), (0, 1))


def test_vcmr_at_one_follows_the_paper_rule():
    m = vcmr_at_one(traces())
    # IoUs: q1 0.5, q2 1.0, q3 0 (wrong video), q4 0 (never matched)
    assert m["vcmr_r1_iou0.3"] == pytest.approx(50.0)
    assert m["vcmr_r1_iou0.5"] == pytest.approx(50.0)
    assert m["vcmr_r1_iou0.7"] == pytest.approx(25.0)
    assert m["miou"] == pytest.approx(100 * 1.5 / 4)


def test_summary_vr_both_rankings_and_ver():
    s = summarize(traces())
    # stopping turns: q1 t1 [v1..] rank1; q2 t2 [v2..] rank1; q3 t1 rank3; q4 t2 [v6, v4] rank2
    assert s["vr_verified_r1"] == pytest.approx(50.0)
    assert s["vr_verified_r5"] == pytest.approx(100.0)
    assert s["vr_verified_mrr"] == pytest.approx(100 * (1 + 1 + 1 / 3 + 1 / 2) / 4)
    # post-refinement: q1 rank1, q2 rank1, q3 rank3, q4 rank1
    assert s["vr_post_refinement_r1"] == pytest.approx(75.0)
    # decisions: q1 yes/right; q2 no/right, yes/right; q3 yes/wrong; q4 garbage, no/right -> 4 of 5 parsed right
    assert s["ver_lenient"] == pytest.approx(80.0)
    assert s["ver_strict"] == pytest.approx(100 * 4 / 6)
    assert s["unparsed"] == pytest.approx(100 / 6)
    assert s["mean_turns"] == pytest.approx(1.5)


def test_per_turn_table_is_cumulative():
    rows = per_turn_table(traces())
    assert [r["turn"] for r in rows] == [1.0, 2.0]
    # after turn 1 only q1 scores at 0.5; after turn 2 q2 also
    assert rows[0]["vcmr_r1_iou0.5"] == pytest.approx(25.0)
    assert rows[1]["vcmr_r1_iou0.5"] == pytest.approx(50.0)
    # verified-at-turn video is gt: turn1 q1 only; turn2 q1, q2
    assert rows[0]["vr_r1"] == pytest.approx(25.0) and rows[1]["vr_r1"] == pytest.approx(50.0)
    assert rows[1]["active"] == pytest.approx(50.0)
    assert rows[1]["ver_strict"] == pytest.approx(100.0)
    table = markdown_table(rows, ["turn", "vcmr_r1_iou0.5", "vr_r1"])
    assert table.splitlines()[2] == "| 1 | 25.0 | 25.0 |"


def test_tvr_recall_at_k():
    preds = [
        [
            ("v2", 0, 5),
            ("v1", 0, 5),
            ("v1", 0, 10),
        ],  # gt v1 (0,10): first hit at rank 2 for 0.5, rank 3 for 0.7
        [("v3", 4, 6)],  # gt v3 (0, 10): IoU 0.2, never
    ]
    gts = [("v1", 0, 10), ("v3", 0, 10)]
    m = vcmr_recall_at_k(preds, gts, ks=(1, 2, 3), thresholds=(0.5, 0.7))
    assert (m["r1_iou0.5"], m["r2_iou0.5"], m["r3_iou0.5"]) == (0.0, 50.0, 50.0)
    assert (m["r2_iou0.7"], m["r3_iou0.7"]) == (0.0, 50.0)
    with pytest.raises(ValueError, match="prediction lists"):
        vcmr_recall_at_k(preds, gts[:1])


def test_video_retrieval_and_missing_ground_truth():
    m = video_retrieval([["a", "b"], ["c"]], ["b", "z"], ks=(1, 2))
    assert m == {"r1": 0.0, "r2": 50.0, "mrr": 25.0}
    with pytest.raises(ValueError, match="no ground truth"):
        summarize([QueryTrace("q", "x", None, None, [turn(1, ["a"], NO, "b")])])
