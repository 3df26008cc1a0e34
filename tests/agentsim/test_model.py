"""The simulated agents' state machine (pure)."""

from __future__ import annotations

from collections import Counter

from backbeat.agentsim.model import Behaviour, make_fleet
from backbeat.core.claims import validate_claim
from backbeat.core.messages import StatusClaim


def test_tasks_go_through_the_realistic_states() -> None:
    fleet = make_fleet(200, Behaviour(help_rate=0.05, failure_rate=0.02, crash_rate=0.002))
    states: Counter[str] = Counter()
    transitions: set[tuple[str, str]] = set()
    last: dict[str, tuple[str, str]] = {}
    silent = 0
    for beat in range(300):
        for agent in fleet:
            report = agent.step()
            if report is None:
                silent += 1
                continue
            states[report.state] += 1
            previous = last.get(report.agent_id)
            if previous is not None and previous[0] == report.task_id:
                transitions.add((previous[1], report.state))
            last[report.agent_id] = (report.task_id, report.state)
            claim = StatusClaim(
                report.agent_id, report.task_id, beat, report.state, report.beats_left,
                report.progress, "1:0:1", report.notes,
            )  # fmt: skip
            assert validate_claim(claim, current_beat=beat).ok
    assert set(states) == {"planning", "executing", "waiting", "review", "done", "failed"}
    assert {
        ("planning", "executing"),
        ("executing", "review"),
        ("review", "done"),
        ("executing", "waiting"),
        ("waiting", "executing"),
        ("executing", "failed"),
        ("failed", "planning"),
    } <= transitions
    assert silent > 0  # crashed agents stay quiet for a while
    assert sum(a.finished_tasks for a in fleet) > 200


def test_fleets_are_reproducible() -> None:
    def run() -> list[object]:
        fleet = make_fleet(20, Behaviour(crash_rate=0.01), seed=7)
        return [agent.step() for _ in range(50) for agent in fleet]

    assert run() == run()
