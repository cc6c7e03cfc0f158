"""HTTP as the registry client uses it: every read bounded in bytes and in time.

Time.  A socket timeout alone bounds only silence: a server that sends one
byte every 5 s never trips it.  So every read of a response goes through a
``Meter``, which sets the socket's timeout to what is left of a deadline
before each receive, and raises ``Expired`` once it has passed:
- a request has ``deadline`` seconds (60 by default) from its sending to the
  end of its answer's headers and of every body that is not a blob (manifests,
  configs, tokens, error bodies);
- a blob's body has no deadline, since a large one on a slow link takes as long
  as it takes, but it must keep moving: a download that receives less than
  ``STALL_BYTES`` in ``deadline`` seconds has stalled;
- connecting, the TLS handshake, and each write have ``silence`` seconds (12).
``STACKO_REGISTRY_TIMEOUT=SECONDS`` sets the deadline (and lowers the
silence to it when shorter), for slow links and for the tests.

Bytes.  Documents are read up to ``MAX_DOCUMENT``, tokens ``MAX_TOKEN``, error
bodies ``ERROR_BODY``; a body read only to be dropped (a redirect's, a 401's,
a retried 5xx's, the /v2/ probe's) at most ``SMALL_BODY``, and when there is
more the connection is closed instead of read to the end.

URLs a server names (a redirect's Location, an upload location, a token
service's realm) are parsed and checked here before anything connects to them.
"""
from __future__ import annotations

import http.client
import io
import os
import socket
import time
import urllib.parse
from collections.abc import Callable

from stacko.registry.auth import RegistryError

SILENCE = 12.0          # seconds: connecting, the TLS handshake, each write
DEADLINE = 60.0         # seconds: a request and its answer but a blob's body
STALL_BYTES = 64 << 10  # a blob must bring this much every DEADLINE seconds
MAX_DOCUMENT = 16 << 20
ERROR_BODY = 64 << 10
SMALL_BODY = 4 << 10
TIMEOUT_VARIABLE = "STACKO_REGISTRY_TIMEOUT"


def limits() -> tuple[float, float]:
    """(deadline, silence), from STACKO_REGISTRY_TIMEOUT when it is set."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if not text:
        return DEADLINE, SILENCE
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise RegistryError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds",
                            hint=f"unset it for the default ({DEADLINE:g} s)")
    return seconds, min(SILENCE, seconds)


class Expired(TimeoutError):
    """A request's deadline passed, or a blob stalled (an OSError, so that the
    code that cleans up after a broken connection runs)."""


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


class SocketReader(io.RawIOBase):
    """The socket as a response reads it, each receive within its meter's time."""

    def __init__(self, sock: socket.socket, meter: Meter) -> None:
        self.io = sock.makefile("rb", buffering=0)
        self.sock, self.meter = sock, meter
        self.current: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        timeout = self.meter.timeout()
        if timeout != self.current:
            self.sock.settimeout(timeout)
            self.current = timeout
        try:
            n = self.io.readinto(buffer)
        except socket.timeout:
            if timeout < self.meter.silence:        # cut short by the deadline
                raise Expired("the deadline passed") from None
            raise
        if n:
            self.meter.moved(n)
        return n  # type: ignore[return-value]

    def close(self) -> None:
        self.io.close()
        super().close()


class MeteredResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, meter: Meter, debuglevel: int = 0,
                 method: str | None = None, url: str | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp.close()             # http.client's own makefile: only its reference goes
        self.fp = io.BufferedReader(SocketReader(sock, meter))  # type: ignore[assignment]


class Metered:
    """What the connections share: getresponse() builds a MeteredResponse
    that reads within self.meter, which each request sets."""
    meter: Meter

    def response_class(self, sock: socket.socket, *args: object,  # type: ignore[override]
                       **kwargs: object) -> MeteredResponse:
        return MeteredResponse(sock, self.meter, *args, **kwargs)  # type: ignore[arg-type]


class Connection(Metered, http.client.HTTPConnection):  # type: ignore[misc]
    pass


class TLSConnection(Metered, http.client.HTTPSConnection):  # type: ignore[misc]
    pass


class Response:
    """A response whose body the caller reads (blobs) or has read (documents)."""

    def __init__(self, raw: http.client.HTTPResponse, meter: Meter, who: str,
                 drop: Callable[[], None]) -> None:
        self.raw, self.meter, self.who, self.drop = raw, meter, who, drop
        self.status: int = raw.status
        self.reason: str = raw.reason
        self.headers = raw.headers
        self.body: bytes | None = None

    def read(self, n: int = -1) -> bytes:
        """For a streamed body: errors are the caller's to handle."""
        return self.raw.read(n)

    def read_all(self, limit: int, what: str) -> bytes:
        """The whole body, at most limit bytes, within the deadline."""
        try:
            data = self.raw.read(limit + 1)
        except Expired:
            self.close()
            raise RegistryError(f"{self.who} sent {what} too slowly: it did not arrive "
                                f"within {self.meter.seconds:g} s",
                                hint=f"on a slow link, give it longer with "
                                     f"{TIMEOUT_VARIABLE}=SECONDS") from None
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise RegistryError(f"{self.who} broke off {what}: {describe(e)}") from None
        if len(data) > limit:
            self.close()
            raise RegistryError(f"{self.who} sent {what} larger than "
                                f"{size_text(limit)}; refusing it")
        return data

    def read_some(self, limit: int) -> bytes:
        """Up to limit bytes of a body that only explains an error."""
        try:
            return self.raw.read(limit)
        except (OSError, http.client.HTTPException):
            return b""

    def discard(self) -> None:
        """Drop a body that is not needed: read a little, and close the
        connection rather than read a longer one to its end."""
        self.read_some(SMALL_BODY)
        self.close()

    def close(self) -> None:
        if not self.raw.isclosed():
            # Closed before its end: the rest would arrive as the connection's next
            # response, so the connection goes too.
            self.raw.close()
            self.drop()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def describe(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


# Failures that the same request would meet again: not retried.
DETERMINISTIC = (http.client.LineTooLong, http.client.InvalidURL,
                 http.client.UnknownProtocol, http.client.UnknownTransferEncoding)


def transient(e: BaseException) -> bool:
    """A failure worth another attempt: the network's, not the server's syntax."""
    if isinstance(e, DETERMINISTIC):
        return False
    return isinstance(e, (OSError, http.client.IncompleteRead,
                          http.client.ImproperConnectionState, http.client.RemoteDisconnected))


# --- URLs a server names -----------------------------------------------------------
def parse_url(url: str, what: str) -> tuple[str, str, str]:
    """(scheme, netloc, path with query) of an absolute http(s) URL that a
    server sent; what names it in the error ("the redirect target …")."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or len(url) > 8192:
        raise RegistryError(f"{what} is not a valid URL: {shown(url)} (it holds spaces "
                            "or control characters, or is too long)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port          # ValueError: a port that is not a number, or out of range
    except ValueError as e:
        raise RegistryError(f"{what} is not a valid URL: {shown(url)} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{what} is not an http or https URL: {shown(url)}")
    if "@" in parts.netloc:
        raise RegistryError(f"{what} carries credentials in its URL, which stacko does not "
                            f"send: {shown(url)}")
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return parts.scheme, parts.netloc, path


def join_url(base: str, location: str, what: str) -> str:
    """location (absolute, or relative to base) as an absolute URL."""
    try:
        return urllib.parse.urljoin(base, location)
    except ValueError as e:
        raise RegistryError(f"{what} is not a valid URL: {shown(location)} ({e})") from None


def origin(scheme: str, netloc: str) -> tuple[str, str, int]:
    """What credentials are given for: scheme, host and port (443 and 80 filled in)."""
    parts = urllib.parse.urlsplit(f"{scheme}://{netloc}")
    return scheme, (parts.hostname or "").lower(), \
        parts.port or (443 if scheme == "https" else 80)


def shown(text: str) -> str:
    """A server's text in a message: quoted, control characters escaped, cut short."""
    return repr(text if len(text) <= 200 else text[:200] + "…")
