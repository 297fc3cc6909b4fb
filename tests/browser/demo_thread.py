"""The demo app on a Trio loop in a background thread, driven from a sync test.

Playwright's sync API blocks, so a browser test cannot be a Trio test. The
app runs instead under ``trio.run`` in its own thread; the test calls into
it with :meth:`DemoThread.run` (``trio.from_thread.run``), and every such
call is bounded by ``trio.fail_after`` inside the loop.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar

import trio

import trioheart
from trioheart.backoff import RetryWindow
from trioheart.demo.app import SHUTDOWN_RETRY, ChatApp, open_broker
from trioheart.proxy import Proxy, open_proxy

T = TypeVar("T")

#: The longest any one call into the app's loop may take.
CALL_TIMEOUT: Final = 20.0


class DemoThread:
    """``with DemoThread(config=...) as demo:`` the demo listens on ``demo.port``.

    It is :func:`trioheart.demo.app.run_demo` without the signal handling
    (which only works in the main thread): the same :class:`ChatApp` on the
    embedded broker, the same pages, the same retry window on shutdown.
    """

    def __init__(
        self,
        *,
        config: trioheart.ConnectionConfig | None = None,
        retry_window: RetryWindow | None = None,
        proxy: bool = False,
        policies: trioheart.PolicyStore | None = None,
    ) -> None:
        self._policies = policies
        self._config = config or trioheart.ConnectionConfig()
        self._retry_window = retry_window or SHUTDOWN_RETRY
        self._with_proxy = proxy
        self._started: queue.Queue[BaseException | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="demo-thread", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.app: ChatApp | None = None
        self.server: trioheart.Server | None = None
        #: The fault-injection proxy in front of the server, with ``proxy=True``.
        self.proxy: Proxy | None = None
        #: Where the server listens.
        self.port = 0
        #: Where pages should connect: the proxy's port with ``proxy=True``, else :attr:`port`.
        self.page_port = 0

    def __enter__(self) -> DemoThread:
        self._thread.start()
        try:
            problem = self._started.get(timeout=CALL_TIMEOUT)
        except queue.Empty:
            raise RuntimeError("the demo did not start within CALL_TIMEOUT") from None
        if problem is not None:
            raise RuntimeError("the demo failed to start") from problem
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Shut the app down (if it still runs) and join its thread. Bounded."""
        if self._thread.is_alive() and self._stop is not None and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=CALL_TIMEOUT)
        assert not self._thread.is_alive(), "the demo thread did not stop"
        if self._error is not None:
            raise RuntimeError("the demo's loop failed") from self._error

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await afn(*args)`` in the app's loop, bounded by CALL_TIMEOUT."""

        async def bounded() -> T:
            with trio.fail_after(CALL_TIMEOUT):
                return await afn(*args)

        assert self._token is not None
        return trio.from_thread.run(bounded, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` in the app's loop."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def start_soon(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the app's nursery; it is cancelled when the app stops."""
        assert self._nursery is not None
        self.run_sync(self._nursery.start_soon, afn, *args)

    def connections(self, name: str) -> list[trioheart.Connection]:
        """The open chat connections of the client called *name*."""
        assert self.server is not None
        return self.run_sync(
            lambda: [c for c in self.server.connections if c.query.get("name") == name]  # type: ignore[union-attr]
        )

    def cut(self, name: str) -> int:
        """Abort every connection of *name* from the server's side: RST, no close frame."""

        def abort() -> int:
            assert self.server is not None
            victims = [c for c in self.server.connections if c.query.get("name") == name]
            for conn in victims:
                conn.close(trioheart.CloseReason.CONNECTION_RESET, "cut by the test")
            return len(victims)

        return self.run_sync(abort)

    def shutdown(self, window: RetryWindow | None = None) -> None:
        """Close the server as a restart would: clients are told to come back within *window*.

        ``None`` means the server's own window (the demo's :data:`SHUTDOWN_RETRY`).
        """
        assert self.server is not None
        self.run(lambda: self.server.aclose(drain_timeout=2.0, retry_window=window))  # type: ignore[union-attr]

    # -- the thread -----------------------------------------------------------

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
            self._started.put(exc)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        metrics = trioheart.Metrics()
        async with open_broker() as broker, trio.open_nursery() as nursery:
            self.app = app = ChatApp(metrics, broker)
            metrics.track_broker(broker)
            self._nursery = nursery
            self.server = await nursery.start(
                lambda task_status: trioheart.serve(
                    app.handle,
                    "127.0.0.1",
                    0,
                    config=self._config,
                    http_handler=app.http,
                    websocket_paths=["/ws"],
                    metrics=metrics,
                    retry_window=self._retry_window,
                    policies=self._policies,
                    task_status=task_status,
                )
            )
            app.server = self.server
            self.port = self.page_port = self.server.port
            async with contextlib.AsyncExitStack() as stack:
                if self._with_proxy:
                    self.proxy = await stack.enter_async_context(
                        open_proxy(upstream=("127.0.0.1", self.port))
                    )
                    self.page_port = self.proxy.listen_address[1]
                self._started.put(None)
                await self._stop.wait()
            with trio.move_on_after(5):
                await self.server.aclose(drain_timeout=1.0)
            nursery.cancel_scope.cancel()
