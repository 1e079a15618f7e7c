"""What every emulated machine (a node, an internet host) gives its namespaces:
one work queue, packet identifiers, randomness, a tracer, and the list of
actions that leave it.

The queue is the softirq of the emulation: entry points enqueue a step and run
the queue to completion, so a frame crossing five devices is five queue steps,
not five nested calls, and an app called from a socket event is never
re-entered from inside its own call. A step carries its packet's time as its
last argument, which grows by each device's modelled delay
(``interfaces.HOP_DELAY``); the queue is first in, first out, so a later step
may carry an earlier time than the one before it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from emunet.dataplane.trace import Tracer

Step = tuple[Callable[..., None], tuple[Any, ...]]


class Machine:
    """The work queue and the per-machine state a namespace asks for.

    ``strict``: an exception raised by a step propagates (tests); otherwise
    :meth:`step_failed` handles it and the queue goes on, so one bad packet
    never stops a machine.
    """

    def __init__(self, name: str, tracer: Tracer | None, rng: random.Random, strict: bool) -> None:
        self.name = name
        self.tracer = tracer or Tracer()
        self.rng = rng
        self.strict = strict
        self.actions: list[Any] = []
        self.queue: deque[Step] = deque()
        # a step is queued with ``push((fn, args))``: the deque's own append
        self.push: Callable[[Step], None] = self.queue.append
        self._running = False
        self._ident = rng.randrange(0x10000)
        # namespaces whose deadline may have moved earlier since the machine read
        # them (a packet in or out, an app's TCP call, a timer run): a set in order
        self.timer_marks: dict[Any, None] = {}

    def mark_timers(self, ns: Any) -> None:
        self.timer_marks[ns] = None

    def enqueue(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` after what is already queued (at the next :meth:`process`)."""
        self.queue.append((fn, args))

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """:meth:`enqueue` then :meth:`process`."""
        self.queue.append((fn, args))
        self.process()

    def process(self) -> None:
        """Run the queue to completion (a no-op when already running it).

        Entry points call it; after socket calls made by applications (which
        only queue work) the owner of the machine calls it.
        """
        if self._running:
            return
        self._running = True
        queue = self.queue
        try:
            if self.strict:
                while queue:
                    step, args = queue.popleft()
                    step(*args)
                return
            while queue:
                step, args = queue.popleft()
                try:
                    step(*args)
                except Exception as exc:  # a bad packet must not stop a machine
                    self.step_failed(exc, args)
        finally:
            self._running = False

    def step_failed(self, exc: Exception, args: tuple[Any, ...]) -> None:
        """A step raised (not strict): the machine counts it and goes on."""
        raise exc

    def take_actions(self) -> list[Any]:
        """Run what is queued, then hand over what must leave the machine."""
        self.process()
        out = self.actions.copy()  # the list itself stays: emitters hold its append
        self.actions.clear()
        return out

    def next_ident(self) -> int:
        """The IPv4 identification of the next locally generated packet."""
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def random_port(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def tcp_iss(self) -> int:
        return self.rng.randrange(1 << 32)
