"""run_agent's progress callback: every query is counted finished once and every verify turn once, as
the loop goes (what `vsr eval`'s progress bar shows)."""

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
    calls: list[tuple[int, int]] = []
    config = AgentConfig(max_turns=3, batch_size=2, top_k=5)
    traces = run_agent(policy, engine, Corpus(), data, config, progress=lambda q, t: calls.append((q, t)))
    assert sum(q for q, _ in calls) == len(data)
    assert sum(t for _, t in calls) == sum(len(trace.turns) for trace in traces)
    # One call per verify step of each batch (not one at the end), then one as the batch closes.
    steps = [max(len(t.turns) for t in traces[i : i + 2]) for i in range(0, len(traces), 2)]
    assert [t > 0 for _, t in calls] == [flag for n in steps for flag in [True] * n + [False]]
    assert all(q >= 0 and t >= 0 for q, t in calls)
