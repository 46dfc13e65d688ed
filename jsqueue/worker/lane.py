"""A lane: one queue at one priority level, as the worker's dispatch sees it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from jsqueue.wire import Delivery, Puller


@dataclass(eq=False)
class Lane:
    """One queue at one priority level: its puller, and its deliveries waiting for a slot."""

    queue: str
    priority: int
    puller: Puller
    waiting: deque[Delivery] = field(default_factory=deque)
    running: int = 0
    paused: bool = False
    #: deliveries parked until a limit lets them start
    parked: int = 0
    #: stride scheduling: the virtual time of its next turn (it advances 1/weight a start)
    turn: float = 0.0

    @property
    def weight(self) -> int:
        return int(2**self.priority)

    @property
    def held(self) -> int:
        return self.running + len(self.waiting)
