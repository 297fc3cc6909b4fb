"""Drive a LinkEngine in virtual time the way the Trio shell does (not a fixture module)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from trioheart.proxy import Stream, Toxic
from trioheart.proxy._engine import Close, LinkEngine, Send, SendEof, Wait
from trioheart.proxy._registry import ToxicRegistry

UP, DOWN = Stream.UPSTREAM, Stream.DOWNSTREAM
EOF = None


@dataclass
class Step:
    """At *at*, do one thing: feed bytes (or EOF), or change a toxic."""

    at: float
    direction: Stream = UP
    data: bytes | None = b""
    add: Toxic | None = None
    remove: str | None = None


@dataclass
class Result:
    sent: dict[Stream, list[tuple[float, bytes]]] = field(
        default_factory=lambda: {UP: [], DOWN: []}
    )
    eof_at: dict[Stream, float] = field(default_factory=dict)
    close: Close | None = None
    close_at: float | None = None
    max_buffered: dict[Stream, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    finished: bool = False
    stuck_input: int = 0

    def data(self, direction: Stream) -> bytes:
        return b"".join(chunk for _, chunk in self.sent[direction])


def simulate(
    steps: list[Step],
    toxics: list[Toxic] = (),  # type: ignore[assignment]
    *,
    seed: int = 0,
    buffer_limit: int = 1 << 20,
    read_size: int = 1 << 16,
    until: float = 1e9,
) -> Result:
    registry = ToxicRegistry()
    for toxic in toxics:
        registry.add(toxic, now=0.0)
    engine = LinkEngine(
        now=0.0, rng=random.Random(seed), buffer_limit=buffer_limit, read_size=read_size
    )
    engine.set_toxics(registry.records, 0.0)
    result = Result()
    todo = deque(sorted(steps, key=lambda s: s.at))
    pending: dict[Stream, deque[bytes | None]] = {UP: deque(), DOWN: deque()}
    done = {UP: False, DOWN: False}  # the writer sent EOF
    ended = {UP: False, DOWN: False}  # the reader gave the engine EOF
    now = 0.0
    for _ in range(1_000_000):
        while todo and todo[0].at <= now:
            step = todo.popleft()
            if step.add is not None:
                registry.add(step.add, now=now)
                engine.set_toxics(registry.records, now)
            elif step.remove is not None:
                registry.remove(step.remove)
                engine.set_toxics(registry.records, now)
            else:
                pending[step.direction].append(step.data)
        progress = True
        waits: list[float] = []
        while progress:
            progress = False
            for direction in (UP, DOWN):
                queue = pending[direction]
                while queue and not ended[direction]:
                    size = engine.read_size(direction)
                    if size == 0:
                        break
                    if queue[0] is EOF:
                        queue.popleft()
                        engine.receive_eof(direction, now)
                        ended[direction] = True
                        progress = True
                        break
                    chunk = queue.popleft()
                    assert chunk is not None
                    if len(chunk) > size:
                        queue.appendleft(chunk[size:])
                        chunk = chunk[:size]
                    engine.receive(direction, chunk, now)
                    progress = True
                    stats = engine.statistics(direction)
                    result.max_buffered[direction] = max(
                        result.max_buffered[direction], stats.buffered
                    )
                while not done[direction]:
                    output = engine.next_output(direction, now)
                    if isinstance(output, Send):
                        assert output.data
                        result.sent[direction].append((now, output.data))
                        engine.sent(direction)
                        progress = True
                    elif isinstance(output, SendEof):
                        result.eof_at[direction] = now
                        engine.sent(direction)
                        done[direction] = True
                        progress = True
                    elif isinstance(output, Close):
                        result.close, result.close_at = output, now
                        return result
                    else:
                        assert isinstance(output, Wait)
                        if output.until is not None:
                            assert output.until > now, "a wait must be for the future"
                            waits.append(output.until)
                        break
        close = engine.poll(now)
        if close is not None:
            result.close, result.close_at = close, now
            return result
        wake = engine.wake_at()
        if wake is not None:
            waits.append(wake)
        if todo:
            waits.append(todo[0].at)
        waits = [w for w in waits if w > now]
        if not waits or min(waits) > until:
            break
        now = min(waits)
    result.finished = engine.finished
    result.stuck_input = sum(len(q) for q in pending.values())
    return result
