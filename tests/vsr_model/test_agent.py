"""The batched multi-turn agent loop on a tiny real policy and a fake engine, with scripted verdicts.

The policy's networks run for real (prompt encoding, SQR rollout, soft tokens through the engine's
BERT); only the text it generates is scripted, so each turn's branch is known in advance.
"""

from dataclasses import dataclass

import pytest
import torch
from test_policy_fakes import FakeEngine, make_clip, tiny_composite_policy

from vsr_model.agent import AgentConfig, GenerationMemo, run_agent
from vsr_model.config import config_from_dict
from vsr_model.metrics import summarize
from vsr_model.policy.base import Generation
from vsr_model.protocol import format_response


@dataclass
class Moment:
    query_id: str
    query: str
    video_id: str
    start: float
    end: float


class Corpus:
    def __init__(self):
        self.requests = []

    def clip(self, video_id, sampling=None):
        self.requests.append(video_id)
        clip = make_clip(3, seed=int(video_id[1:]), duration=20.0)
        clip.video_id = video_id
        return clip


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(num_videos=30, embed_dim=32)


@pytest.fixture(scope="module")
def policy(engine):
    policy = tiny_composite_policy(engine, num_latents=3)
    with torch.no_grad():
        policy.sqr.readout.out.weight.normal_(0, 0.3)
    return policy


@pytest.fixture
def script(policy, monkeypatch):
    """Replace generation by `respond(query, shown_video) -> text`; records every prompt shown."""
    shown: list[tuple[str, str]] = []
    state = {"respond": None}
    original_encode = policy.encode

    def encode(items, completions=None):
        if completions is None:
            state["items"] = list(items)
        return original_encode(items, completions)

    def generate(batch, settings):
        texts = [state["respond"](it.query, it.clip.video_id) for it in state["items"]]
        shown.extend((it.query, it.clip.video_id) for it in state["items"])
        ids = [policy.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return Generation(ids, texts)

    monkeypatch.setattr(policy, "encode", encode)
    monkeypatch.setattr(policy, "generate", generate)

    def set_script(respond):
        state["respond"] = respond
        return shown

    return set_script


def moments(engine, n=5):
    # Ground truth: a video the engine does NOT rank first for the text, so refinement is needed.
    out = []
    for i in range(n):
        query = f"a red circle grows {i}"
        first = engine.search(engine.encode_query([query]), 3)[0]
        out.append(Moment(f"q{i}", query, first[1 + i % 2].video_id, 2.0, 6.0))
    return out


def test_a_policy_that_verifies_correctly_stops_on_match_and_refines_otherwise(engine, policy, script):
    data = moments(engine)
    gt = {m.query: m.video_id for m in data}
    shown = script(
        lambda q, v: (
            format_response("found", True, (2.0, 6.0)) if v == gt[q] else format_response("no", False)
        )
    )
    traces = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3, batch_size=2, top_k=5))
    assert [t.query_id for t in traces] == [m.query_id for m in data]
    for trace in traces:
        videos = [turn.shown_video for turn in trace.turns]
        assert len(set(videos)) == len(videos)  # exclude_seen: never shown twice
        for turn in trace.turns[:-1]:
            assert turn.parsed.not_matched and turn.refinement_tokens == 3 and turn.label_matched is False
        if trace.answer_turn is not None:
            assert trace.answer_video == trace.gt_video and trace.answer_span == (2.0, 6.0)
            assert trace.final_ranking == trace.answer_turn.ranking
        else:
            assert len(trace.turns) == 3
            assert not set(videos) & set(trace.final_ranking)  # post-refinement search excluded them
    assert len(shown) == sum(len(t.turns) for t in traces)
    metrics = summarize(traces)
    assert metrics["ver_strict"] == 100.0
    answered = sum(t.answer_turn is not None for t in traces)
    assert metrics["vcmr_r1_iou0.7"] == pytest.approx(100 * answered / len(traces))


def _soft_token_lengths(engine, monkeypatch):
    lengths = []
    original = engine.encode_query

    def encode_query(texts, soft_tokens=None):
        # The residual append mode also encodes the text with zero tokens in their place: not counted.
        if soft_tokens is None or torch.count_nonzero(soft_tokens):
            lengths.append(None if soft_tokens is None else soft_tokens.shape[1])
        return original(texts, soft_tokens)

    monkeypatch.setattr(engine, "encode_query", encode_query)
    return lengths


@pytest.mark.parametrize(("accumulate", "expected"), [(True, [None, 3, 6, 9]), (False, [None, 3, 3, 3])])
def test_soft_tokens_accumulate_or_reset(engine, policy, script, monkeypatch, accumulate, expected):
    script(lambda q, v: format_response("no", False))
    data = moments(engine, 1)
    lengths = _soft_token_lengths(engine, monkeypatch)
    config = AgentConfig(max_turns=3, accumulate_soft_tokens=accumulate)
    (trace,) = run_agent(policy, engine, Corpus(), data, config)
    assert lengths == expected
    assert len(trace.turns) == 3 and trace.answer_turn is None


def test_hard_query_refinement_rewrites_the_engine_query(engine, policy, script, monkeypatch):
    script(lambda q, v: format_response("no", False, mode="hard", rewritten_query=f"{q} again"))
    data = moments(engine, 1)
    texts = []
    original = engine.encode_query
    monkeypatch.setattr(
        engine, "encode_query", lambda t, soft_tokens=None: texts.append(list(t)) or original(t, soft_tokens)
    )
    (trace,) = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=2, refiner="hqr"))
    # the verifier always sees the user's query; the engine gets each turn's rewrite
    assert texts == [["a red circle grows 0"], ["a red circle grows 0 again"], ["a red circle grows 0 again"]]
    assert not set(trace.final_ranking) & {t.shown_video for t in trace.turns}
    assert trace.turns[0].rewritten_query == "a red circle grows 0 again"
    assert trace.turns[0].refinement_tokens == len(policy.tokenizer.encode("a red circle grows 0 again"))


def test_unrefinable_garbage_searches_again_and_seen_setting(engine, policy, script):
    script(lambda q, v: "I am not sure")
    data = moments(engine, 1)
    (trace,) = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3))
    videos = [t.shown_video for t in trace.turns]
    assert len(set(videos)) == 3 and all(t.refinement_tokens == 0 for t in trace.turns)
    assert all("missing <answer>" in t.parsed.problems for t in trace.turns)
    (again,) = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3, exclude_seen=False))
    assert len({t.shown_video for t in again.turns}) == 1


def test_no_final_refine_keeps_last_turn_ranking(engine, policy, script):
    script(lambda q, v: format_response("no", False))
    config = AgentConfig(max_turns=1, final_refine=False)
    (trace,) = run_agent(policy, engine, Corpus(), moments(engine, 1), config)
    assert trace.final_ranking == trace.turns[0].ranking


def test_config_validation():
    with pytest.raises(ValueError, match="max_turns"):
        AgentConfig(max_turns=0)
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(AgentConfig, {"turns": 2})
    with pytest.raises(ValueError, match="unknown refiner"):
        AgentConfig(refiner="latent")
    with pytest.raises(ValueError, match="unknown verifier"):
        AgentConfig(verifier="human")


@pytest.mark.parametrize(("turns", "final_refine"), [(1, False), (1, True), (2, True)])
def test_cut_of_a_longer_run_equals_a_run_with_fewer_turns(engine, policy, script, turns, final_refine):
    # A verdict that depends on the query and the video, so queries stop at different turns.
    data = moments(engine, 6)
    first = [engine.search(engine.encode_query([m.query]), 1)[0][0].video_id for m in data]
    accept = {m.query: {m.video_id} | ({first[i]} if i % 3 == 0 else set()) for i, m in enumerate(data)}
    script(
        lambda q, v: (
            format_response("yes", True, (2.0, 6.0)) if v in accept[q] else format_response("no", False)
        )
    )
    long = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3, batch_size=4, top_k=5))
    short = run_agent(
        policy,
        engine,
        Corpus(),
        data,
        AgentConfig(max_turns=turns, batch_size=4, top_k=5, final_refine=final_refine),
    )
    assert any(len(t.turns) == 3 for t in long) and any(len(t.turns) == 1 for t in long)
    assert [t.cut(turns, final_refine).to_dict() for t in long] == [t.to_dict() for t in short]
    assert summarize([t.cut(turns, final_refine) for t in long]) == summarize(short)


def test_oracle_verifier_decides_by_the_ground_truth_and_the_policy_verdict_is_still_measured(
    engine, policy, script
):
    data = moments(engine, 4)
    script(lambda q, v: format_response("looks right", True, (2.0, 6.0)))  # the policy accepts everything
    accepting = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3))
    assert all(len(t.turns) == 1 and t.answer_video != t.gt_video for t in accepting)
    config = AgentConfig(max_turns=3, verifier="oracle", refiner="none")
    oracle = run_agent(policy, engine, Corpus(), data, config)
    for trace in oracle:
        assert trace.answer_video == trace.gt_video  # the engine ranks it second or third
        assert [t.decided_matched for t in trace.turns] == [False] * (len(trace.turns) - 1) + [True]
        assert trace.answer_span == (2.0, 6.0)
    metrics = summarize(oracle)
    assert metrics["vr_verified_r1"] == 100.0
    assert metrics["ver_strict"] < 100.0  # the policy's own verdicts were wrong on the wrong videos


def test_next_candidate_refiner_searches_the_same_query_without_the_shown_videos(engine, policy, script):
    script(lambda q, v: format_response("no", False))
    data = moments(engine, 3)
    (trace, *_) = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=3, refiner="none", top_k=5))
    first = trace.turns[0].ranking
    assert [t.shown_video for t in trace.turns] == first[:3]  # the original ranking, one by one
    assert all(t.refinement_tokens == 0 and t.refined_query is None for t in trace.turns)
    assert trace.final_ranking[0] == first[3]


def test_first_videos_replace_the_first_search_and_ground_truth_ranks_are_recorded(engine, policy, script):
    script(lambda q, v: format_response("no", False))
    data = moments(engine, 2)
    shown = [m.video_id for m in data]
    traces = run_agent(
        policy, engine, Corpus(), data, AgentConfig(max_turns=2, refiner="none"), first_videos=shown
    )
    for trace, moment in zip(traces, data, strict=True):
        assert trace.turns[0].shown_video == moment.video_id
        # the engine itself ranks the ground truth 2nd or 3rd for these queries (see `moments`)
        assert trace.turns[0].gt_rank in (2, 3)
        assert trace.turns[1].gt_rank is None  # shown already, so excluded from the second search


def test_a_generation_memo_replays_greedy_turns_across_runs(engine, policy, script):
    shown = script(lambda q, v: format_response("no", False))
    data = moments(engine, 3)
    memo = GenerationMemo()
    first = run_agent(policy, engine, Corpus(), data, AgentConfig(max_turns=2, refiner="none"), memo=memo)
    calls = len(shown)
    again = run_agent(
        policy, engine, Corpus(), data, AgentConfig(max_turns=2, refiner="none", verifier="oracle"), memo=memo
    )
    assert len(shown) == calls and memo.hits == sum(len(t.turns) for t in again)
    assert [t.turns[0].response for t in first] == [t.turns[0].response for t in again]
    with pytest.raises(ValueError, match="cannot serve sampled"):
        run_agent(
            policy,
            engine,
            Corpus(),
            data,
            AgentConfig(generation={"do_sample": True, "max_new_tokens": 4}),
            memo=memo,
        )
