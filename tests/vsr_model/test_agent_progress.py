"""run_agent's progress callback, called as the loop goes: every verify turn and every query's end is
reported once, at the turn it happens (what `vsr eval`'s progress bar shows)."""

from test_agent import Corpus, engine, moments, policy, script  # noqa: F401  (fixtures)

from vsr_model.agent import AgentConfig, run_agent
from vsr_model.protocol import format_response


def test_progress_counts_finished_queries_and_verify_turns(engine, policy, script):  # noqa: F811
    data = moments(engine)
    gt = {m.query: m.video_id for m in data}
    script(
        lambda q, v: (
            format_response("found", True, (2.0, 6.0)) if v == gt[q] else format_response("no", False)
        )
    )
    calls: list[tuple[int, int, int]] = []
    config = AgentConfig(max_turns=3, batch_size=2, top_k=5)
    traces = run_agent(policy, engine, Corpus(), data, config, progress=lambda *c: calls.append(c))
    turns = [len(t.turns) for t in traces]
    assert any(n < 3 for n in turns) and any(n == 3 for n in turns)  # some end early, some run out
    # After each verify turn of each batch: how many were verified then, and how many ended there.
    expected = []
    for i in range(0, len(traces), 2):
        batch = turns[i : i + 2]
        for turn in range(1, max(batch) + 1):
            verified = sum(n >= turn for n in batch)
            ended = sum(n == turn for n in batch)
            expected.append((turn, verified, ended))
    assert calls == expected
    assert sum(c[2] for c in calls) == len(data) and sum(c[1] for c in calls) == sum(turns)
