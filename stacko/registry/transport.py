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

The HTTP itself is stacko/registry/http1.py's (our own, not http.client's:
see there why), and TLS is ssl's, imported only when a connection speaks it.
"""
from __future__ import annotations

import os
import sys

from stacko.lean import connect
from stacko.registry.auth import RegistryError
from stacko.registry.http1 import address, split_netloc
from stacko.registry.wire import STALL_BYTES, Expired, MalformedResponse, Meter

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

    from stacko.registry import http1

__all__ = ["STALL_BYTES", "Expired", "Meter", "Response", "limits", "transient"]

SILENCE = 12.0          # seconds: connecting, the TLS handshake, each write
DEADLINE = 60.0         # seconds: a request and its answer but a blob's body
MAX_DOCUMENT = 16 << 20
ERROR_BODY = 64 << 10
SMALL_BODY = 4 << 10
SNIFF = 3.0             # seconds the look for a plain HTTP server may take
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


class Response:
    """A response whose body the caller reads (blobs) or has read (documents)."""

    def __init__(self, raw: http1.Response, meter: Meter, who: str,
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
        except OSError as e:
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
        except OSError:
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


def transient(e: BaseException) -> bool:
    """A failure worth another attempt: the network's, not the server's syntax
    (nor a request stacko refuses to send, nor a name that does not exist)."""
    return isinstance(e, OSError) and not isinstance(e, MalformedResponse) \
        and not unknown_name(e)


def unknown_name(e: BaseException) -> bool:
    """The resolver's answer that a host name does not exist (or has no
    address): asking again does not help, unlike a lookup that failed for the
    time being (EAI_AGAIN).  A getaddrinfo error can only come once _socket
    was imported, so sys.modules says, as for ssl below."""
    sockets = sys.modules.get("_socket")
    if sockets is None or not isinstance(e, sockets.gaierror):
        return False
    return e.errno in {getattr(sockets, code) for code in ("EAI_NONAME", "EAI_NODATA")
                       if hasattr(sockets, code)}


# --- TLS -----------------------------------------------------------------------------
# ssl is imported only to speak TLS (it costs a start ~5 ms): an error of its
# kind can only have been raised once it was, so sys.modules says.
def tls_error(e: BaseException) -> bool:
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(e, ssl.SSLError)


def unverified(e: BaseException) -> str | None:
    """The reason a certificate did not verify, when that is what e is."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(e, ssl.SSLCertVerificationError):
        return str(e.verify_message)
    return None


def length2(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def client_hello(host: str) -> bytes:
    """A TLS 1.2 ClientHello any TLS server answers with a TLS record (its
    ServerHello, or an alert).  Its supported_groups extension (type 0x000a)
    holds an LF, so that an HTTP server reads a request line and refuses it."""
    extensions = b"\x00\x0a" + length2(length2(bytes.fromhex("001d00170018")))
    extensions += b"\x00\x0b" + length2(b"\x01\x00")          # ec_point_formats
    extensions += b"\x00\x0d" + length2(length2(bytes.fromhex(   # signature_algorithms
        "040305030603080408050806040105010601")))
    if host.isascii() and not host.replace(".", "").isdigit() and ":" not in host:
        extensions += b"\x00\x00" + length2(length2(b"\x00" + length2(host.encode())))
    ciphers = bytes.fromhex("c02bc02fc02cc030cca9cca8009c009d")
    hello = (b"\x03\x03" + os.urandom(32) + b"\x00" + length2(ciphers) + b"\x01\x00"
             + length2(extensions))
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + length2(handshake)


def speaks_plain_http(netloc: str, timeout: float) -> bool:
    """Whether the server at netloc answers a TLS ClientHello with a byte that
    cannot begin a TLS record (content types 20-24): then TLS with it fails,
    whatever the context, and plain HTTP is what it speaks.  Anything else
    (a TLS record, silence, a closed or refused connection) is False: the
    real TLS probe decides, as before.  For --tls-verify=false, whose probe
    of TLS would otherwise load ssl for a plain HTTP registry."""
    host, port = split_netloc(netloc, 443)
    try:   # the lookup has the whole timeout, as the connection after the probe would
        sock = connect(address(host), port, min(timeout, SNIFF), within=timeout)
        try:
            sock.sendall(client_hello(host))  # type: ignore[attr-defined]
            first = sock.recv(1)  # type: ignore[attr-defined]
        finally:
            sock.close()  # type: ignore[attr-defined]
    except OSError:
        return False
    return bool(first) and not 20 <= first[0] <= 24


# --- URLs a server names -----------------------------------------------------------
# urllib.parse is imported here only when a server names a URL (a redirect, an
# upload location, a token realm): a look at a manifest needs none.
# The upload locations a registry names (an absolute URL on its own origin, or
# a path) are read without urllib.parse (~2.8 ms with ipaddress, every push
# that uploads) when they are plain: a host of letters, digits, dots and
# dashes with an optional port, then a path and query of PLAIN_PATH
# characters, with no dot segment ("/." anywhere), no fragment, no empty
# query.  For these urlsplit and urljoin give what is written;
# tests/test_registry_client.py holds the two to the same, and any other URL
# goes to urllib.parse.
PLAIN_HOST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
PLAIN_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                       "/?=&%._-~+:,")


def plain_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, netloc, path with query) of a plain absolute http(s) URL, else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    netloc, slash, tail = rest.partition("/")
    host, colon, port = netloc.partition(":")
    if not host or not PLAIN_HOST.issuperset(host) or host[0] in ".-" \
            or (colon and not (port.isdigit() and port.isascii() and 0 < len(port) <= 5
                               and int(port) <= 65535)):
        return None
    path = slash + tail
    if not plain_path(path):
        return None
    return scheme, netloc, path or "/"


def plain_path(path: str) -> bool:
    """A path (and query) that urlsplit and urljoin leave as written."""
    return PLAIN_PATH.issuperset(path) and "/." not in path and not path.endswith("?") \
        and (path == "" or path.startswith("/")) and not path.startswith("//")


def parse_url(url: str, what: str) -> tuple[str, str, str]:
    """(scheme, netloc, path with query) of an absolute http(s) URL that a
    server sent; what names it in the error ("the redirect target …")."""
    plain = plain_url(url) if len(url) <= 8192 else None
    if plain is not None:
        return plain
    import urllib.parse
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
    origin_of_base = plain_url(base)
    if origin_of_base is not None and (plain_url(location) is not None or (
            location.startswith("/") and plain_path(location))):
        if location.startswith("/"):
            return f"{origin_of_base[0]}://{origin_of_base[1]}{location}"
        return location
    import urllib.parse
    try:
        return urllib.parse.urljoin(base, location)
    except ValueError as e:
        raise RegistryError(f"{what} is not a valid URL: {shown(location)} ({e})") from None


# Digests, repository names and scopes are spelt in these characters, which
# urlencode leaves alone but for ":" and "/" (and " " in a scope, which it
# writes "+"): such a query needs no urllib.parse (~2.5 ms with ipaddress).
URL_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/")


def query(pairs: list[tuple[str, str]]) -> str:
    """urllib.parse.urlencode(pairs), without importing it for plain values."""
    if all(URL_PLAIN.issuperset(k + v) for k, v in pairs):
        def quoted(text: str) -> str:
            return text.replace(":", "%3A").replace("/", "%2F")
        return "&".join(f"{quoted(k)}={quoted(v)}" for k, v in pairs)
    import urllib.parse
    return urllib.parse.urlencode(pairs)


def origin(scheme: str, netloc: str) -> tuple[str, str, int]:
    """What credentials are given for: scheme, host and port (443 and 80 filled in)."""
    host, port = split_netloc(netloc, 443 if scheme == "https" else 80)
    return scheme, host.lower(), port


def shown(text: str) -> str:
    """A server's text in a message: quoted, control characters escaped, cut short."""
    return repr(text if len(text) <= 200 else text[:200] + "…")
