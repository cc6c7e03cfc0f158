"""stacko's own HTTP/1.1 client (stacko/registry/http1.py) against hostile and
odd answers, each served raw by a small socket server on 127.0.0.1: heads too
long or with too many fields, bad chunk sizes, Content-Length beside chunked,
lengths that are not numbers, connections that end early; and requests that
would carry a line break are never sent."""
from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

import pytest

from stacko.registry.client import Client, Options, RegistryError
from stacko.registry.http1 import Connection, UnsafeRequest
from stacko.registry.ref import parse
from stacko.registry.transport import client_hello, speaks_plain_http
from stacko.registry.wire import CutShort, Expired, MalformedResponse, Meter

Answer = Union[bytes, Callable[[socket.socket], None]]


class RawServer:
    """Answers the n-th request it reads with answers[n] (the last one again
    when there are fewer), then closes the connection when close is set."""

    def __init__(self, answers: List[Answer], close: bool = False) -> None:
        self.answers, self.close = answers, close
        self.requests: List[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.talk, args=(sock,), daemon=True).start()

    def talk(self, sock: socket.socket) -> None:
        with sock:
            data = b""
            while True:
                while b"\r\n\r\n" not in data and not (data[:1] == b"\x16" and b"\n" in data):
                    try:
                        more = sock.recv(65536)
                    except OSError:
                        return
                    if not more:
                        return
                    data += more
                if data[:1] == b"\x16":      # a TLS ClientHello: refused as HTTP servers do
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    return
                head, _, data = data.partition(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
                try:
                    if callable(answer):
                        answer(sock)
                    else:
                        sock.sendall(answer)
                except OSError:
                    return
                if self.close:
                    return

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: List[RawServer] = []

    def start(*answers: Answer, close: bool = False) -> RawServer:
        servers.append(RawServer(list(answers), close))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


def exchange(server: RawServer, method: str = "GET", conn: Optional[Connection] = None,
             seconds: float = 5.0) -> bytes:
    """One request and its whole body."""
    conn = conn or Connection(server.host, timeout=5.0)
    conn.request(method, "/v2/", headers={"User-Agent": "test"})
    conn.meter = Meter(seconds, min(seconds, 5.0))
    response = conn.getresponse()
    return response.read(1 << 20)


def refused(server: RawServer, kind: type = MalformedResponse) -> str:
    with pytest.raises(kind) as e:
        exchange(server)
    return str(e.value)


OK = b"HTTP/1.1 200 OK\r\n"


# --- heads --------------------------------------------------------------------------
def test_a_plain_answer(serve: Callable[..., RawServer]) -> None:
    assert exchange(serve(OK + b"Content-Length: 5\r\nX-A:  b \r\n\r\nhello")) == b"hello"


def test_a_field_line_too_long(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"X-Long: " + b"a" * (8 << 10) + b"\r\nContent-Length: 0\r\n\r\n")
    assert "longer than" in refused(server)


def test_a_status_line_too_long(serve: Callable[..., RawServer]) -> None:
    assert "longer than" in refused(serve(b"HTTP/1.1 200 " + b"O" * 10000 + b"\r\n\r\n"))


def test_a_head_too_long_in_all(serve: Callable[..., RawServer]) -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 1000) for n in range(80))   # 80 KB
    assert "64 KiB" in refused(serve(OK + fields + b"Content-Length: 0\r\n\r\n"))


def test_too_many_fields(serve: Callable[..., RawServer]) -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(101))
    assert "more than 100 fields" in refused(serve(OK + fields + b"\r\n"))


def test_a_hundred_fields_are_fine(serve: Callable[..., RawServer]) -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(99))
    assert exchange(serve(OK + fields + b"Content-Length: 2\r\n\r\nok")) == b"ok"


@pytest.mark.parametrize("head", [
    b"HTTP/2 200 OK\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 O\x00K\r\n\r\n",
    OK + b"No colon here\r\n\r\n", OK + b"Bad name: x\r\n\r\n", OK + b": empty\r\n\r\n",
    OK + b"X-A: a\rb\r\n\r\n", OK + b"X-A: a\x00b\r\n\r\n", OK + b" folded: first\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + OK + b"Content-Length: 0\r\n\r\n",
])
def test_malformed_heads(serve: Callable[..., RawServer], head: bytes) -> None:
    refused(serve(head))


def test_interim_answers_and_folded_fields(serve: Callable[..., RawServer]) -> None:
    server = serve(b"HTTP/1.1 100 Continue\r\n\r\n" + OK +
                   b"X-Folded: one\r\n  two\r\nContent-Length: 2\r\n\r\nok")
    conn = Connection(server.host, timeout=5.0)
    conn.request("GET", "/")
    conn.meter = Meter(5, 5)
    response = conn.getresponse()
    assert response.status == 200 and response.headers["x-folded"] == "one two"
    assert response.read() == b"ok"


def test_the_connection_ends_before_the_answer(serve: Callable[..., RawServer]) -> None:
    refused(serve(b"", close=True), CutShort)
    refused(serve(OK + b"Content-Length: 3\r\n", close=True), CutShort)


# --- bodies -------------------------------------------------------------------------
def chunked(body: bytes) -> bytes:
    return OK + b"Transfer-Encoding: chunked\r\n\r\n" + body


def test_chunks_with_extensions_and_trailers(serve: Callable[..., RawServer]) -> None:
    server = serve(chunked(b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n"
                           b"X-Trailer: t\r\n\r\n"))
    assert exchange(server) == b"hello world"


@pytest.mark.parametrize("size", [b"zz", b"0x5", b"-5", b"1_0", b"", b" ", b"5 5",
                                  b"f" * 20, b"1" + b"0" * 15])
def test_bad_chunk_sizes(serve: Callable[..., RawServer], size: bytes) -> None:
    assert "chunk size" in refused(serve(chunked(size + b"\r\nhello\r\n0\r\n\r\n")))


def test_a_chunk_size_line_too_long(serve: Callable[..., RawServer]) -> None:
    assert "longer than" in refused(serve(chunked(b"5;" + b"x" * 2000 + b"\r\nhello\r\n0\r\n\r\n")))


def test_a_chunk_longer_than_its_size(serve: Callable[..., RawServer]) -> None:
    assert "where its size says" in refused(serve(chunked(b"3\r\nhello\r\n0\r\n\r\n")))


def test_trailers_without_end(serve: Callable[..., RawServer]) -> None:
    trailers = b"".join(b"X-%d: v\r\n" % n for n in range(200))
    assert "more than 100 fields" in refused(serve(chunked(b"0\r\n" + trailers + b"\r\n")))


def test_chunks_cut_short(serve: Callable[..., RawServer]) -> None:
    refused(serve(chunked(b"5\r\nhel"), close=True), CutShort)
    refused(serve(chunked(b"5\r\nhello\r\n"), close=True), CutShort)


def test_content_length_beside_chunked(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n0\r\n\r\n")
    assert "both a Content-Length and a Transfer-Encoding" in refused(server)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"])
def test_other_transfer_codings(serve: Callable[..., RawServer], coding: bytes) -> None:
    assert "not chunked" in refused(serve(OK + b"Transfer-Encoding: " + coding + b"\r\n\r\n"))


@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3", b"+5", b"5 5", b"0x5", b"",
                                    b"\xd9\xa3", b"9" * 30, b"5, 6"])
def test_lengths_that_are_not_one_number(serve: Callable[..., RawServer], length: bytes) -> None:
    assert "Content-Length" in refused(serve(OK + b"Content-Length: " + length + b"\r\n\r\nhello"))


def test_two_lengths_must_agree(serve: Callable[..., RawServer]) -> None:
    assert exchange(serve(OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")) == b"hello"
    assert "Content-Length" in refused(serve(OK + b"Content-Length: 5\r\nContent-Length: 4\r\n"
                                                  b"\r\nhello"))


def test_a_body_cut_short(serve: Callable[..., RawServer]) -> None:
    assert "before the end of the body" in refused(
        serve(OK + b"Content-Length: 10\r\n\r\nhello", close=True), CutShort)


def test_a_body_to_the_close(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"\r\nuntil the end", close=True)
    assert exchange(server) == b"until the end"


def test_no_body_for_head_204_and_304(serve: Callable[..., RawServer]) -> None:
    head = OK + b"Content-Length: 1000\r\n\r\n"
    server = serve(head, b"HTTP/1.1 204 No Content\r\n\r\n",
                   b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", OK +
                   b"Content-Length: 2\r\n\r\nok")
    conn = Connection(server.host, timeout=5.0)
    assert exchange(server, "HEAD", conn) == b""
    assert exchange(server, "GET", conn) == b""
    assert exchange(server, "GET", conn) == b""
    assert exchange(server, "GET", conn) == b"ok"
    assert server.connections == 1            # each answer ended where its head said


def test_keep_alive_and_close(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"Content-Length: 1\r\n\r\na", OK + b"Content-Length: 1\r\n\r\nb",
                   OK + b"Connection: close\r\nContent-Length: 1\r\n\r\nc")
    conn = Connection(server.host, timeout=5.0)
    assert [exchange(server, conn=conn) for _ in range(3)] == [b"a", b"b", b"c"]
    assert server.connections == 1 and conn.sock is None
    assert exchange(server, conn=conn) == b"c" and server.connections == 2


def test_bytes_beyond_the_body_are_not_the_next_answer(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"Content-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
                   OK + b"Content-Length: 4\r\n\r\ngood")
    conn = Connection(server.host, timeout=5.0)
    assert exchange(server, conn=conn) == b"a"
    assert exchange(server, conn=conn) == b"good" and server.connections == 2


def test_a_body_that_trickles_meets_its_deadline(serve: Callable[..., RawServer]) -> None:
    def trickle(sock: socket.socket) -> None:
        sock.sendall(OK + b"Content-Length: 100\r\n\r\n")
        for _ in range(100):
            sock.sendall(b"x")
            threading.Event().wait(0.1)
    with pytest.raises(Expired):
        exchange(serve(trickle), seconds=1.0)


# --- requests -----------------------------------------------------------------------
@pytest.mark.parametrize("target, headers", [
    ("/v2/a b", {}), ("/v2/a\r\nX: y", {}), ("/v2/\x00", {}), ("/v2/é", {}),
    ("/v2/", {"X-A": "a\r\nX-Evil: 1"}), ("/v2/", {"X-A": "a\nb"}), ("/v2/", {"X-A": "a\x00"}),
    ("/v2/", {"Bad Name": "a"}), ("/v2/", {"X-A\r\n": "a"}), ("/v2/", {"X-A": "\u20ac"}),
])
def test_a_request_with_a_line_break_is_never_sent(serve: Callable[..., RawServer],
                                                   target: str, headers: dict) -> None:
    server = serve(OK + b"Content-Length: 0\r\n\r\n")
    conn = Connection(server.host, timeout=5.0)
    with pytest.raises(UnsafeRequest):
        conn.request("GET", target, headers=headers)
    assert conn.sock is None and server.requests == []


def test_what_a_request_sends(serve: Callable[..., RawServer]) -> None:
    server = serve(OK + b"Content-Length: 0\r\n\r\n")
    conn = Connection(server.host, timeout=5.0)
    conn.request("POST", "/v2/x/blobs/uploads/?a=b", headers={"Authorization": "Basic eA=="})
    conn.meter = Meter(5, 5)
    conn.getresponse().read()
    assert server.requests == [(f"POST /v2/x/blobs/uploads/?a=b HTTP/1.1\r\nHost: {server.host}"
                                "\r\nAccept-Encoding: identity\r\nAuthorization: Basic eA==\r\n"
                                "Content-Length: 0").encode()]


# --- through the client: malformed answers are errors, and not retried ---------------
@pytest.mark.parametrize("answer", [
    OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    OK + b"Content-Length: -5\r\n\r\n", chunked(b"zz\r\n"),
])
def test_the_client_says_not_valid_http(serve: Callable[..., RawServer], answer: bytes) -> None:
    server = serve(answer, close=True)
    client = Client(parse(f"{server.host}/app:v1"), Options(tls_verify=False))
    with pytest.raises(RegistryError) as e:
        client.manifest("v1", ("application/vnd.oci.image.manifest.v1+json",))
    assert "not valid HTTP" in e.value.message or "broke off" in e.value.message
    assert len([r for r in server.requests if b"/manifests/" in r]) == 1


# --- which scheme, without ssl for a plain HTTP registry ------------------------------
def test_a_plain_http_server_is_told_from_its_answer(serve: Callable[..., RawServer]) -> None:
    server = serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", close=True)
    assert speaks_plain_http(server.host, 5.0)


def test_a_closed_port_or_silence_is_left_to_the_tls_probe() -> None:
    with socket.create_server(("127.0.0.1", 0)) as quiet:      # accepts, never answers
        port = quiet.getsockname()[1]
        assert not speaks_plain_http(f"127.0.0.1:{port}", 0.5)
    assert not speaks_plain_http(f"127.0.0.1:{port}", 0.5)    # now refused


def test_a_tls_server_answers_the_hello_with_a_server_hello(tmp_path: Path) -> None:
    """The hand-made ClientHello is one a TLS server takes: it answers with a
    handshake record (its ServerHello), and speaks_plain_http says no."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "2",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept() -> None:
            for _ in range(2):
                sock, _ = listener.accept()
                try:
                    with context.wrap_socket(sock, server_side=True):
                        pass
                except OSError:
                    pass
        threading.Thread(target=accept, daemon=True).start()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            sock.sendall(client_hello("localhost"))
            assert sock.recv(5)[:3] == b"\x16\x03\x03"       # a TLS 1.2 handshake record
        assert not speaks_plain_http(f"127.0.0.1:{port}", 5.0)
