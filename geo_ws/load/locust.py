"""A Locust user for plain WebSocket endpoints: the implementation behind :mod:`geo_ws.locust`."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any, NoReturn, TypeVar

from locust import User
from locust.exception import RescheduleTask

from ..exceptions import ConnectionClosed, WebSocketError
from ..io.client import ClientConnection, connect

__all__ = ["UnexpectedMessage", "WebSocketSession", "WebSocketUser"]

_T = TypeVar("_T")


class UnexpectedMessage(Exception):
    """A message is not the one ``expect=`` asked for."""


#: What a step may fail with: counted as a Locust failure.
_FAILURES = (OSError, WebSocketError, UnexpectedMessage)


def _size(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


def _check(message: str | bytes, expect: str | bytes | None) -> str | bytes:
    """Return ``message``, if it is what ``expect`` asks (anything when None)."""
    if expect is not None and message != expect:
        raise UnexpectedMessage(f"expected {expect!r:.60}, got {message!r:.60}")
    return message


class WebSocketSession:
    """The ``client`` of a :class:`WebSocketUser`: one connection whose steps fire
    Locust request events.

    Args:
        user: the Locust user it belongs to (its ``host``, ``timeout`` and environment).
    """

    def __init__(self, user: WebSocketUser) -> None:
        self.user = user
        self.connection: ClientConnection | None = None
        """The current connection, or None before :meth:`connect`."""
        # Whether a failed step has told the user that this connection closed: only then
        # does the next step reopen it, so every lost connection shows up once.
        self._close_reported = False
        self.path = ""
        """The path the connection was opened with (the default request name)."""
        self._connect_options: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        """The host Locust was given, as a ``ws://`` or ``wss://`` URL."""
        host = (self.user.host or self.user.environment.host or "").rstrip("/")
        for http, ws in (("http://", "ws://"), ("https://", "wss://")):
            if host.startswith(http):
                return ws + host[len(http) :]
        return host

    def _fire(
        self,
        request_type: str,
        name: str | None,
        start: float,
        length: int = 0,
        exception: BaseException | None = None,
    ) -> None:
        self.user.environment.events.request.fire(
            request_type=request_type,
            name=name or self.path or "/",
            response_time=(perf_counter() - start) * 1000.0,
            response_length=length,
            response=None,
            context=self.user.context(),
            exception=exception,
        )

    def _failed(
        self, request_type: str, name: str | None, start: float, exc: Exception
    ) -> NoReturn:
        """Record a failed step and end the task."""
        if isinstance(exc, ConnectionClosed):
            self._close_reported = True
        self._fire(request_type, name, start, exception=exc)
        raise RescheduleTask() from exc

    def connect(
        self,
        path: str = "/",
        *,
        name: str | None = None,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
    ) -> ClientConnection:
        """Open a connection to ``host + path`` (closing the current one); a ``CONNECT`` step.

        Args:
            path: the endpoint's path and query, e.g. ``/chat?room=1``.
            name: the name in Locust's statistics (the path by default).
            headers: extra handshake headers.
            subprotocols: subprotocols to offer.

        Returns:
            The new connection (also :attr:`connection`).
        """
        self.close()
        self.path = path
        self._connect_options = {"headers": headers, "subprotocols": subprotocols}
        return self._open(name)

    def _open(self, name: str | None) -> ClientConnection:
        start = perf_counter()
        try:
            self._close_reported = False
            self.connection = connect(
                self.base_url + self.path, timeout=self.user.timeout, **self._connect_options
            )
        except _FAILURES as exc:
            self._failed("CONNECT", name, start, exc)
        self._fire("CONNECT", name, start)
        assert self.connection is not None
        return self.connection

    def _live(self, name: str | None) -> ClientConnection:
        """The open connection, reopened if it was lost.

        Raises:
            RuntimeError: :meth:`connect` was never called.
        """
        if self.connection is None:
            raise RuntimeError("call client.connect(path) first, e.g. in on_start")
        if self.connection.closed and self._close_reported:
            return self._open(name)
        return self.connection

    def _step(
        self,
        kind: str,
        name: str | None,
        action: Callable[[ClientConnection], _T],
        size: Callable[[_T], int] = lambda _: 0,
    ) -> _T:
        """Run one step on the live connection, timed and recorded as a request event."""
        conn = self._live(name)
        start = perf_counter()
        try:
            result = action(conn)
        except _FAILURES as exc:
            self._failed(kind, name, start, exc)
        self._fire(kind, name, start, size(result))
        return result

    def _wait(self, timeout: float | None) -> float:
        return self.user.timeout if timeout is None else timeout

    def send(self, data: str | bytes, *, name: str | None = None) -> None:
        """Send a message (text for ``str``, binary for bytes); a ``SEND`` step."""
        self._step("SEND", name, lambda conn: conn.send(data), lambda _: _size(data))

    def recv(
        self,
        timeout: float | None = None,
        *,
        expect: str | bytes | None = None,
        name: str | None = None,
    ) -> str | bytes:
        """Wait for a message (at most ``timeout``, by default the user's); a ``RECV`` step.

        Args:
            timeout: seconds to wait.
            expect: if given, a different message is a failure.
            name: the name in Locust's statistics.
        """
        wait = self._wait(timeout)
        return self._step("RECV", name, lambda conn: _check(conn.recv(wait), expect), _size)

    def request(
        self,
        data: str | bytes,
        timeout: float | None = None,
        *,
        expect: str | bytes | None = None,
        name: str | None = None,
    ) -> str | bytes:
        """Send a message and wait for the next one: one ``REQUEST`` step, a round trip.

        Args:
            data: the message to send.
            timeout: seconds to wait for the reply (by default the user's).
            expect: if given, a different reply is a failure.
            name: the name in Locust's statistics.

        Returns:
            The reply.
        """
        wait = self._wait(timeout)

        def round_trip(conn: ClientConnection) -> str | bytes:
            conn.send(data)
            return _check(conn.recv(wait), expect)

        return self._step("REQUEST", name, round_trip, _size)

    def ping(self, timeout: float | None = None, *, name: str | None = None) -> float:
        """Ping the server and wait for the Pong; a ``PING`` step.

        Returns:
            The round trip in seconds.
        """
        wait = self._wait(timeout)
        return self._step("PING", name, lambda conn: conn.ping(timeout=wait))

    def close(self, code: int = 1000, reason: str = "", *, name: str | None = None) -> None:
        """Close the connection, if one is open; a ``CLOSE`` step (failed unless the server
        answers the closing handshake)."""
        conn, self.connection = self.connection, None
        if conn is None or conn.closed:
            return
        start = perf_counter()
        conn.close(code, reason, timeout=self.user.timeout)
        error = None if conn.close_code == code else ConnectionClosed(conn.close_code or 1006)
        self._fire("CLOSE", name, start, exception=error)


class WebSocketUser(User):
    """A Locust user with a WebSocket client: :attr:`client`, a :class:`WebSocketSession`.

    Open the connection in ``on_start`` (``self.client.connect("/path")``); it is closed
    in ``on_stop`` (call ``super().on_stop()`` if you override it).
    """

    abstract = True
    timeout: float = 10.0
    """Seconds a handshake, a receive or a ping may take."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.client = WebSocketSession(self)
        """The user's WebSocket session."""

    def on_stop(self) -> None:
        """Close the connection."""
        self.client.close()
