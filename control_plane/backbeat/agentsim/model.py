"""Simulated agents: a task state machine per agent, advanced once per beat. Pure, no I/O.

A task goes planning → executing → review → done, with detours: an agent may get stuck and
ask for help (``waiting``, with a promise of how many beats the help should take), or fail
(``failed``) and retry from planning (up to ``max_retries``, then the task is abandoned).
Durations are random per task. A crashed agent says nothing for a while, then starts over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from backbeat.core.messages import TaskState


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Probabilities per beat (or per task) and duration ranges, in beats."""

    planning_beats: tuple[int, int] = (1, 3)
    executing_beats: tuple[int, int] = (3, 12)
    review_beats: tuple[int, int] = (1, 2)
    #: Chance per executing beat that the agent gets stuck and asks for help.
    help_rate: float = 0.03
    help_promise_beats: tuple[int, int] = (1, 4)
    #: How long help really takes (may exceed the promise).
    help_beats: tuple[int, int] = (1, 6)
    #: Chance per executing beat that the task fails.
    failure_rate: float = 0.01
    max_retries: int = 2
    #: Chance per beat that a running agent crashes, and how long it stays down.
    crash_rate: float = 0.0
    crash_beats: tuple[int, int] = (4, 16)


@dataclass(frozen=True, slots=True)
class Report:
    """What an agent says at one beat (becomes a StatusClaim)."""

    agent_id: str
    task_id: str
    state: str
    beats_left: int
    progress: float
    notes: str


@dataclass(slots=True)
class SimAgent:
    agent_id: str
    rng: random.Random
    behaviour: Behaviour
    task_seq: int = 0
    attempt: int = 0
    state: TaskState = TaskState.PLANNING
    #: Beats left in the current state, and the planned total of the task.
    in_state: int = 0
    total_beats: int = 1
    elapsed_beats: int = 0
    help_promise: int = 0
    down_for: int = 0
    crashes: int = 0
    finished_tasks: int = 0
    failures: int = 0

    @property
    def task_id(self) -> str:
        return f"{self.agent_id}/task-{self.task_seq}"

    @property
    def crashed(self) -> bool:
        return self.down_for > 0

    def _span(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(bounds[0], bounds[1])

    def _new_task(self) -> None:
        self.task_seq += 1
        self.attempt = 0
        self._plan()

    def _plan(self) -> None:
        b = self.behaviour
        self.state = TaskState.PLANNING
        self.in_state = self._span(b.planning_beats)
        self.total_beats = (
            self.in_state + sum(b.executing_beats) // 2 + sum(b.review_beats) // 2 + 1
        )
        self.elapsed_beats = 0

    def start(self) -> None:
        self._new_task()

    def step(self) -> Report | None:
        """Advance one beat. Returns what the agent reports, or None while it is down."""
        b = self.behaviour
        if self.down_for > 0:
            self.down_for -= 1
            if self.down_for == 0:
                self._new_task()  # a restarted agent has lost its task
            return None
        if b.crash_rate and self.rng.random() < b.crash_rate:
            self.crashes += 1
            self.down_for = self._span(b.crash_beats)
            return None
        self.elapsed_beats += 1
        self.in_state -= 1
        state = self.state
        if state is TaskState.EXECUTING:
            if self.rng.random() < b.failure_rate:
                self.state, self.in_state = TaskState.FAILED, 1
                self.failures += 1
            elif self.rng.random() < b.help_rate:
                self.state = TaskState.WAITING
                self.help_promise = self._span(b.help_promise_beats)
                self.in_state = self._span(b.help_beats)
        if self.in_state <= 0:
            self._advance()
        return self._report()

    def _advance(self) -> None:
        b = self.behaviour
        state = self.state
        if state is TaskState.PLANNING:
            self.state, self.in_state = TaskState.EXECUTING, self._span(b.executing_beats)
        elif state is TaskState.WAITING:
            self.state, self.in_state = TaskState.EXECUTING, self._span((1, 4))
        elif state is TaskState.EXECUTING:
            self.state, self.in_state = TaskState.REVIEW, self._span(b.review_beats)
        elif state is TaskState.REVIEW:
            self.state, self.in_state = TaskState.DONE, 1
        elif state is TaskState.DONE:
            self.finished_tasks += 1
            self._new_task()
        elif state is TaskState.FAILED:
            if self.attempt < b.max_retries:
                self.attempt += 1
                self._plan()
            else:
                self._new_task()

    def _report(self) -> Report:
        state = self.state
        if state is TaskState.WAITING:
            beats_left = self.help_promise
        else:
            beats_left = self.total_beats - self.elapsed_beats
        if state is TaskState.DONE:
            progress = 1.0
        else:
            progress = min(0.99, max(0.0, self.elapsed_beats / max(1, self.total_beats)))
        notes = f"attempt {self.attempt + 1}" if self.attempt else ""
        return Report(self.agent_id, self.task_id, state.value, beats_left, progress, notes)


def make_fleet(
    count: int, behaviour: Behaviour, *, seed: int = 1, prefix: str = "sim"
) -> list[SimAgent]:
    """``count`` agents with independent, reproducible random streams."""
    fleet = []
    for i in range(count):
        agent = SimAgent(f"{prefix}-{i:05d}", random.Random(seed * 1_000_003 + i), behaviour)
        agent.start()
        fleet.append(agent)
    return fleet
