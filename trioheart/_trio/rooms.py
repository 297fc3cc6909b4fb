"""Put a server connection into a room: the resume handshake, on any broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from ..broker import BrokerUnavailable
from ..errors import ConfigError, ConnectionClosed
from ..log import get_logger
from ..reasons import CloseReason
from ..resume import (
    RESUME_QUERY_PARAM,
    LogLimits,
    NewSession,
    ResumeAccepted,
    ResumeRefused,
    ResumeReset,
    Session,
)

if TYPE_CHECKING:
    from ..broker import Broker
    from ..prometheus import Metrics
    from .connection import Connection

__all__ = ["join_room"]

_log = get_logger("trioheart.rooms")
#: How long a connection opened with ``resume=1`` may take to send its request.
DEFAULT_RESUME_TIMEOUT: Final = 10.0


async def join_room(
    conn: Connection,
    broker: Broker,
    room: str,
    *,
    identity: str = "",
    metrics: Metrics | None = None,
    resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
    replay_limits: LogLimits | None = None,
) -> NewSession | ResumeAccepted | ResumeReset | None:
    """Make *conn* live in *room*: a fresh session, or the resume it asks for.

    A connection whose URL has ``resume=1``
    (:data:`~trioheart.resume.RESUME_QUERY_PARAM`) must send its
    ``{"type": "resume", ...}`` request as its first message, within
    *resume_timeout*; the broker decides it against the room's log. The
    outcome's messages (``hello``, or ``resumed`` and the replay, or
    ``reset`` and a fresh ``hello``) are queued to *conn* before any later
    room message. A task in the connection's nursery sends a fresh token
    halfway through each token's lifetime, so a long-lived connection can
    always resume.

    What a resuming connection may be replayed is bounded by
    *replay_limits*, or by default by the ``resume_*`` keys of the heartbeat
    policy it runs (:meth:`ResolvedPolicy.replay_limits
    <trioheart.ResolvedPolicy.replay_limits>`, when the server has
    policies): a gap beyond them is a ``reset``, as if the log had been
    trimmed for this client.

    Each resume request is logged (``session.resumed``, ``session.reset``
    or ``session.refused``) and counted in ``trioheart_resumes_total`` and
    ``trioheart_messages_replayed_total`` when *metrics* is given.

    Returns:
      The outcome, or ``None`` when *conn* could not join: the request was
      refused (the ``refused`` message is sent and *conn* closes as
      ``resume_refused``), the broker is unreachable (``broker_unavailable``),
      or the room name is invalid (an error message, then ``app_closed``).
      Leave the room with ``broker.leave(room, conn)`` when done.

    Raises:
      ConnectionClosed: if *conn* ended while joining.
    """
    request: str | None = None
    if conn.query.get(RESUME_QUERY_PARAM) == "1":
        request = ""  # nothing in time: refused as malformed
        with trio.move_on_after(resume_timeout):
            first = await conn.receive()
            request = first if isinstance(first, str) else ""
    if replay_limits is None and conn.policy is not None:
        replay_limits = conn.policy.policy.replay_limits()
    try:
        if replay_limits is None:  # a broker written before replay_limits still works
            outcome = await broker.join(room, conn, identity=identity, request=request)
        else:
            outcome = await broker.join(
                room, conn, identity=identity, request=request, replay_limits=replay_limits
            )
    except BrokerUnavailable as exc:
        conn.close(CloseReason.BROKER_UNAVAILABLE, str(exc))
        return None
    except ConfigError as exc:
        await conn.send(_error(str(exc)))
        conn.close(CloseReason.APP_CLOSED, str(exc))
        return None
    if isinstance(outcome, ResumeRefused):
        _log.info(
            "session.refused",
            conn_id=conn.conn_id,
            room=room,
            reason=outcome.reason.value,
            detail=outcome.detail,
        )
        if metrics is not None:
            metrics.resumed("refused")
        for text in outcome.messages():
            conn.send_nowait(text)
        conn.close(outcome.close_reason, outcome.detail)
        return None
    if isinstance(outcome, ResumeAccepted):
        replayed = len(outcome.replay)
        _log.info(
            "session.resumed",
            conn_id=conn.conn_id,
            room=room,
            session=outcome.session.id,
            from_seq=outcome.from_seq,
            seq=outcome.seq,
            replayed=replayed,
        )
        if metrics is not None:
            metrics.resumed("resumed", replayed)
    elif isinstance(outcome, ResumeReset):
        _log.info(
            "session.reset",
            conn_id=conn.conn_id,
            room=room,
            reason=outcome.reason.value,
            seq=outcome.seq,
        )
        if metrics is not None:
            metrics.resumed("reset")
    conn.nursery.start_soon(
        _refresh_tokens, conn, broker, outcome.session, name=f"trioheart.tokens[{conn.conn_id}]"
    )
    return outcome


async def _refresh_tokens(conn: Connection, broker: Broker, session: Session) -> None:
    """Send a fresh token halfway through each one's lifetime, until the connection ends."""
    try:
        while True:
            # The broker's clock may be the wall clock (shared by nodes), so
            # wait the token's half-life from now rather than until a time.
            await trio.sleep(max(0.0, session.refresh_at - session.issued_at))
            session = broker.refresh(session)
            conn.send_nowait(session.token_message())
    except ConnectionClosed:
        return


def _error(message: str) -> str:
    import json

    return json.dumps({"type": "error", "error": message}, separators=(",", ":"))
