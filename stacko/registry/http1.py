"""HTTP/1.1 as the registry client speaks it, every read bounded in bytes and time.

Why not http.client: importing it costs a registry command ~20 ms of its start
(it imports the email package for its header parser), and its parser does not
bound what a registry may send the way stacko needs: no limit on a response's
head as a whole, 64 KiB per line, chunk-size lines read up to 64 KiB,
trailers up to 100 lines of 64 KiB each, no refusal of a Content-Length beside
a Transfer-Encoding, and a body that ends before its Content-Length comes back
short rather than as an error.  What a client of one API needs is small:

- a request: method, target and fields, refused when any would carry CR, LF,
  NUL or another control character (header injection), then its body;
- a response's head: a status line and fields, at most MAX_HEAD bytes in all,
  MAX_LINE per line and MAX_FIELDS fields; interim (1xx) answers skipped;
- its body framed as RFC 9112 section 6.3 says: none for HEAD, 1xx, 204 and
  304; chunked (size lines of at most MAX_CHUNK_LINE, trailers bounded as a
  head and dropped); Content-Length (digits only; several fields must agree);
  else until the server closes.  Transfer-Encoding beside Content-Length, or
  another transfer coding than chunked, is refused (a smuggling vector, and
  nothing a registry sends);
- keep-alive: a connection whose answer was read to its end, and that neither
  side closes, carries the next request.

Time: every receive goes through a ``Meter`` (see stacko/registry/transport.py
for the rule): the socket's timeout is set to what is left of the deadline
before each receive, and ``Expired`` raised once it has passed (wire.py, the
buffered socket below this module, with the errors both raise).
"""
from __future__ import annotations

from stacko.lean import connect
from stacko.registry.wire import (RECEIVE, CutShort, LineTooLong, MalformedResponse, Meter,
                                  Stream)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import socket
    import ssl

MAX_LINE = 8 << 10          # one line of a head, or of trailers
MAX_HEAD = 64 << 10         # a status line and its fields (interim answers included)
MAX_FIELDS = 100            # fields of a head, or of trailers
MAX_CHUNK_LINE = 1 << 10    # a chunk-size line, extensions included
MAX_INTERIM = 8             # 1xx answers before the final one

TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEX = b"0123456789abcdefABCDEF"
CONTROLS = "".join(map(chr, range(0x20))) + "\x7f"
NO_BODY = (204, 304)


class UnsafeRequest(ValueError):
    """A request stacko refuses to send: a target or field that would carry a
    line break or another control character."""


class Headers:
    """A head's fields: get() and [] give the first of a name (any case), None
    when absent, as http.client's message does."""

    __slots__ = ("fields", "first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = fields
        self.first: dict[str, str] = {}
        for name, value in fields:
            self.first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.first.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self.first.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.first

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.fields if n.lower() == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self.fields)


def field_values(value: str) -> list[str]:
    return [v.strip(" \t").lower() for v in value.split(",")]


def read_head(stream: Stream, what: str, used: int = 0) -> tuple[list[bytes], int]:
    """The field lines of a head up to its empty line, and the bytes of the
    head used then (used: before them).  Lines beginning with a space or tab
    continue the one before (obsolete folding), joined with a space."""
    lines: list[bytes] = []
    while True:
        room = MAX_HEAD - used
        try:
            line = stream.line(min(MAX_LINE, room), what)
        except LineTooLong:
            if room >= MAX_LINE:
                raise
            raise MalformedResponse(f"{what} is longer than {MAX_HEAD >> 10} KiB") from None
        if line is None:
            raise CutShort(f"the connection closed in the middle of {what}")
        used += len(line) + 2
        if used > MAX_HEAD:
            raise MalformedResponse(f"{what} is longer than {MAX_HEAD >> 10} KiB")
        if not line:
            return lines, used
        if line[:1] in (b" ", b"\t"):
            if not lines:
                raise MalformedResponse(f"{what} begins with a continuation line")
            lines[-1] += b" " + line.strip(b" \t")
            continue
        lines.append(line)
        if len(lines) > MAX_FIELDS:
            raise MalformedResponse(f"{what} has more than {MAX_FIELDS} fields")


def parse_fields(lines: list[bytes], what: str) -> list[tuple[str, str]]:
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, TOKEN):
            raise MalformedResponse(f"{what} holds a line that is not a field: "
                                    f"{line[:80]!r}")
        value = value.strip(b" \t")
        if b"\r" in value or b"\x00" in value:
            raise MalformedResponse(f"{what}: field {name.decode()!r} holds a CR or NUL")
        fields.append((name.decode("ascii"), value.decode("latin-1")))
    return fields


class Response:
    """The answer to one request: status, reason, headers, and its body read
    through read(), framed as the head says."""

    def __init__(self, conn: Connection, stream: Stream, method: str) -> None:
        self.conn, self.stream = conn, stream
        used = 0
        for _ in range(MAX_INTERIM + 1):
            version, self.status, self.reason, headers, used = self._head(used)
            if self.status >= 200:
                break
            if self.status == 101:
                raise MalformedResponse("the server switches protocols, which stacko did not "
                                        "ask for")
        else:
            raise MalformedResponse(f"the server sent more than {MAX_INTERIM} interim answers")
        self.headers = headers
        tokens = [t for v in headers.get_all("Connection") for t in field_values(v)]
        self.will_close = "close" in tokens or (version == "HTTP/1.0" and
                                                "keep-alive" not in tokens)
        self.length: int | None = None      # what is left of a Content-Length body
        self.chunked = False
        self.chunk_left = -1                # -1: a chunk-size line comes next
        self.done = False
        coding = headers.get_all("Transfer-Encoding")
        lengths = headers.get_all("Content-Length")
        if method == "HEAD" or self.status in NO_BODY:
            self.length = 0
        elif coding:
            if lengths:
                raise MalformedResponse("the answer has both a Content-Length and a "
                                        "Transfer-Encoding")
            codings = [c for v in coding for c in field_values(v)]
            if codings != ["chunked"]:
                raise MalformedResponse(f"the answer's Transfer-Encoding is "
                                        f"{', '.join(codings)!r}, not chunked")
            self.chunked = True
        elif lengths:
            values = {v for field in lengths for v in field_values(field)}
            text = values.pop() if len(values) == 1 else ""
            if not text.isdigit() or not text.isascii() or len(text) > 18:
                raise MalformedResponse(f"the answer's Content-Length is not one number: "
                                        f"{', '.join(lengths)[:80]!r}")
            self.length = int(text)
        else:
            self.will_close = True          # the body ends when the connection does
        if self.length == 0:
            self._end()

    def _head(self, used: int) -> tuple[str, int, str, Headers, int]:
        stream = self.stream
        line: bytes | None = b""
        for _ in range(4):              # stray empty lines before a status line are skipped
            line = stream.line(MAX_LINE, "the status line")
            if line is None:
                raise CutShort("the server closed the connection without answering")
            used += len(line) + 2
            if line:
                break
        if not line:
            raise MalformedResponse("the answer begins with empty lines")
        if used > MAX_HEAD:
            raise MalformedResponse(f"the answer's head is longer than {MAX_HEAD >> 10} KiB")
        parts = line.split(b" ", 2)
        version = parts[0]
        if len(parts) < 2 or version not in (b"HTTP/1.1", b"HTTP/1.0") or \
                len(parts[1]) != 3 or not parts[1].isdigit():
            raise MalformedResponse(f"the status line is not HTTP/1.x's: {line[:80]!r}")
        reason = parts[2] if len(parts) == 3 else b""
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in reason):
            raise MalformedResponse("the status line holds a control character")
        lines, used = read_head(stream, "the answer's head", used)
        return (version.decode(), int(parts[1]), reason.decode("latin-1"),
                Headers(parse_fields(lines, "the answer's head")), used)

    # --- the body -----------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        """Up to n bytes of the body (all of it when n < 0): fewer only at its
        end.  A body cut short raises CutShort, a malformed one
        MalformedResponse."""
        if self.done or n == 0:
            return b""
        pieces: list[bytes] = []
        want = n if n >= 0 else -1
        while want != 0 and not self.done:
            data = self._some(want if want > 0 else RECEIVE)
            pieces.append(data)
            if want > 0:
                want -= len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _some(self, n: int) -> bytes:
        """Between 1 and n bytes of the body, or b"" at its end."""
        if self.chunked:
            if self.chunk_left <= 0:
                self._next_chunk()
                if self.done:
                    return b""
            n = min(n, self.chunk_left)
        elif self.length is not None:
            n = min(n, self.length)
        data = self.stream.read(n)
        if not data:
            if self.length is None and not self.chunked:
                self._end()                 # read to close: this is its end
                return b""
            self.close()
            raise CutShort("the connection closed before the end of the body")
        if self.chunked:
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                try:
                    end = self.stream.line(2, "the end of a chunk")
                except LineTooLong:
                    end = b"?"
                if end is None:
                    raise CutShort("the connection closed before the end of the body")
                if end:
                    raise MalformedResponse("a chunk does not end where its size says")
        elif self.length is not None:
            self.length -= len(data)
            if self.length == 0:
                self._end()
        return data

    def _next_chunk(self) -> None:
        line = self.stream.line(MAX_CHUNK_LINE, "a chunk-size line")
        if line is None:
            raise CutShort("the connection closed before the end of the body")
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or len(size) > 15 or size.translate(None, HEX):
            raise MalformedResponse(f"a chunk size is not a hexadecimal number: {line[:40]!r}")
        self.chunk_left = int(size, 16)
        if self.chunk_left == 0:
            read_head(self.stream, "the trailers")       # bounded, and dropped
            self._end()

    def _end(self) -> None:
        self.done = True
        self.conn.finished(self)

    def isclosed(self) -> bool:
        """Whether the body was read to its end (or dropped)."""
        return self.done

    def close(self) -> None:
        """Drop the rest of the body: the connection goes with it."""
        if not self.done:
            self.done = True
            self.conn.close()


def split_netloc(netloc: str, port: int) -> tuple[str, int]:
    """(host, port) of HOST[:PORT] or [V6]:PORT; port when none is given."""
    host, colon, text = netloc.rpartition(":")
    if not colon or "]" in text:
        host, text = netloc, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if text:
        if not text.isdigit() or not text.isascii() or not 0 < int(text) < 65536:
            raise UnsafeRequest(f"{netloc!r} has no valid port")
        port = int(text)
    return host, port


def address(host: str) -> str | bytes:
    """host as getaddrinfo takes it: an ASCII name as bytes, which it does not
    run through the idna codec (whose import costs a start ~1 ms)."""
    return host.encode() if host.isascii() else host


def check_text(text: str, what: str) -> None:
    if any(c in CONTROLS for c in text):
        raise UnsafeRequest(f"{what} holds a line break or another control character")


class Connection:
    """One connection to HOST[:PORT], TLS when a context is given; opened when a
    request needs it, kept for the next while the answers allow."""

    def __init__(self, netloc: str, timeout: float, context: ssl.SSLContext | None = None,
                 blocksize: int = 1 << 20) -> None:
        self.netloc, self.timeout, self.context, self.blocksize = \
            netloc, timeout, context, blocksize
        self.host, self.port = split_netloc(netloc, 443 if context is not None else 80)
        default = 443 if context is not None else 80
        self.host_field = netloc if self.port != default else \
            (f"[{self.host}]" if ":" in self.host else self.host)
        self.sock: socket.socket | None = None
        self.stream: Stream | None = None
        self.meter: Meter | None = None
        self.response: Response | None = None
        self.method = "GET"

    def connect(self) -> None:
        """The host's lookup, and each connect, within self.timeout (lean.connect)."""
        if self.context is None:    # plain HTTP: the socket module is not needed
            sock = connect(address(self.host), self.port, self.timeout, no_delay=True)
        else:
            import socket           # which ssl imports anyway
            # A socket.socket, as ssl wraps, connected to the address looked up;
            # the certificate is checked against the name (SNI too).
            tcp: socket.socket = connect(address(self.host), self.port,  # type: ignore[assignment]
                                         self.timeout, no_delay=True, factory=socket.socket)
            try:
                sock = self.context.wrap_socket(tcp, server_hostname=self.host)
            except BaseException:
                tcp.close()
                raise
        self.sock, self.stream = sock, Stream(sock)  # type: ignore[assignment,arg-type]

    def request(self, method: str, target: str, body: object = None,
                headers: dict[str, str] | None = None) -> None:
        """Sends the request; body: bytes, or a file read in blocks, whose
        Content-Length the caller gives."""
        head = self.head(method, target, body, headers or {})
        self.method = method
        if self.stream is not None and (self.response is not None or self.stream.buffer):
            self.close()        # an answer not read to its end, or bytes beyond it
        if self.sock is None:
            self.connect()
        assert self.sock is not None and self.stream is not None
        self.sock.settimeout(self.timeout)          # a reader may have lowered it
        self.stream.current = self.timeout
        if isinstance(body, (bytes, bytearray)):
            self.sock.sendall(head + body)
            return
        self.sock.sendall(head)
        if body is not None:
            while True:
                block = body.read(self.blocksize)   # type: ignore[attr-defined]
                if not block:
                    break
                self.sock.sendall(block)

    def head(self, method: str, target: str, body: object, headers: dict[str, str]) -> bytes:
        if not method or method.encode().translate(None, TOKEN):
            raise UnsafeRequest(f"{method!r} is not a method")
        if any(c <= " " or c == "\x7f" for c in target) or not target.isascii():
            raise UnsafeRequest("the request's target holds a space, a control character or "
                                "a character that is not ASCII")
        fields = {"Host": self.host_field, "Accept-Encoding": "identity"}
        fields.update(headers)
        names = {n.lower() for n in fields}
        if "content-length" not in names:
            if isinstance(body, (bytes, bytearray)):
                fields["Content-Length"] = str(len(body))
            elif body is None and method in ("POST", "PUT", "PATCH"):
                fields["Content-Length"] = "0"
            elif body is not None:
                raise UnsafeRequest("a streamed request body needs its Content-Length")
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in fields.items():
            if not name or name.encode().translate(None, TOKEN):
                raise UnsafeRequest(f"{name!r} is not a field name")
            check_text(value, f"the request's field {name}")
            lines.append(f"{name}: {value}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise UnsafeRequest("a request field holds a character beyond Latin-1") from None

    def getresponse(self) -> Response:
        """The answer to the request just sent, its body unread, read within
        self.meter (set by the caller after sending)."""
        assert self.stream is not None
        self.stream.meter = self.meter
        response = Response(self, self.stream, self.method)
        if not response.done:
            self.response = response
        return response

    def finished(self, response: Response) -> None:
        """response's body was read to its end: the connection takes the next
        request, unless either side said close."""
        self.response = None
        if response.will_close:
            self.close()

    def close(self) -> None:
        self.response = None
        if self.sock is not None:
            sock, self.sock, self.stream = self.sock, None, None
            sock.close()
