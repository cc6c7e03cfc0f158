"""A socket's bytes as an HTTP response is read from them: buffered, every
receive bounded in time by a ``Meter`` (the rule: stacko/registry/transport.py)
and every line in bytes, and the errors of a connection that breaks, stalls or
sends what is not HTTP.  Below http1.py, which reads heads and bodies from a
``Stream``."""
from __future__ import annotations

import time

from stacko.lean import SocketTimeout

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import socket

RECEIVE = 256 << 10         # bytes asked of one receive
STALL_BYTES = 64 << 10      # a streamed body must bring this much every deadline


class Expired(TimeoutError):
    """A request's deadline passed, or a body stalled (an OSError, so that the
    code that cleans up after a broken connection runs)."""


class MalformedResponse(OSError):
    """What the server sent is not HTTP/1.1 as stacko reads it; the same
    request would get the same answer, so it is not retried."""


class LineTooLong(MalformedResponse):
    """A line longer than the reader allows."""


class CutShort(ConnectionError):
    """The connection ended before the answer did (worth another attempt)."""


class Meter:
    """The time left to one response: a fixed deadline, or, once streaming, a
    deadline pushed on by every STALL_BYTES received."""

    __slots__ = ("seconds", "silence", "deadline", "streaming", "count")

    def __init__(self, seconds: float, silence: float) -> None:
        self.seconds, self.silence = seconds, silence
        self.deadline = time.monotonic() + seconds
        self.streaming = False
        self.count = 0

    def timeout(self) -> float:
        """The socket timeout for the next receive."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Expired("the deadline passed")
        return self.silence if left >= self.silence else left

    def moved(self, n: int) -> None:
        if self.streaming:
            self.count += n
            if self.count >= STALL_BYTES:
                self.count = 0
                self.deadline = time.monotonic() + self.seconds

    def stream(self) -> None:
        """From now on, a body that moves (a blob's)."""
        self.streaming, self.count = True, 0
        self.deadline = time.monotonic() + self.seconds


class Stream:
    """A socket's bytes as a response reads them: buffered, each receive
    within the meter's time."""

    __slots__ = ("sock", "meter", "buffer", "current")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.meter: Meter | None = None
        self.buffer = b""
        self.current: float | None = None     # the socket's timeout, as last set

    def receive(self, size: int) -> bytes:
        meter = self.meter
        timeout = meter.timeout() if meter is not None else None
        if timeout != self.current:
            self.sock.settimeout(timeout)
            self.current = timeout
        try:
            data = self.sock.recv(size)
        except SocketTimeout:
            if meter is not None and timeout is not None and timeout < meter.silence:
                raise Expired("the deadline passed") from None  # cut short by the deadline
            raise
        if data and meter is not None:
            meter.moved(len(data))
        return data

    def line(self, limit: int, what: str) -> bytes | None:
        """One line without its LF (and CR), at most limit bytes; None when the
        connection ends before its first byte."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                if end > limit:
                    break
                line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > limit:
                break
            start = len(self.buffer)
            data = self.receive(RECEIVE)
            if not data:
                if self.buffer:
                    raise CutShort(f"the connection closed in the middle of {what}")
                return None
            self.buffer += data
        raise LineTooLong(f"{what} has a line longer than {limit} bytes")

    def read(self, n: int) -> bytes:
        """Up to n bytes (n > 0), at least one unless the connection ended."""
        if self.buffer:
            data, self.buffer = self.buffer[:n], self.buffer[n:]
            return data
        return self.receive(min(n, RECEIVE))
