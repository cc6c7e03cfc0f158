"""The registry client against hostile servers (issue 18, items 3-7 and 16):
bodies without end, redirects to plain HTTP, blobs longer than declared,
servers that trickle, malformed URLs and tokens, and passwords kept out of
argv and output.  Each server is a few lines of Python on 127.0.0.1; one port
answers both TLS and plain HTTP, as a registry's host would on 443 and 80."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

from conftest import Runner
from servers import threaded
from stacko.errors import StackoError
from stacko.formats.ocisource import BadArchive, DigestMismatch
from stacko.registry.client import Client, Options, RegistryError
from stacko.registry.pull import BlobReader, resolve
from stacko.registry.ref import parse

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CAP = 64 << 20          # what an endless body sends at most, so a failing test ends
USER, PASSWORD = "ci", "pw-9f2e"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"
    scheme = "http"

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(5)
            if self.request.recv(1, socket.MSG_PEEK) == b"\x16":     # a TLS ClientHello
                self.request = self.server.tls.wrap_socket(self.request, server_side=True)
                self.scheme = "https"
            self.request.settimeout(None)
        super().setup()

    def handle_one(self) -> None:
        self.server.log.append((self.scheme, self.command, self.path,
                                self.headers.get("Authorization")))
        self.server.behave(self)

    do_GET = do_HEAD = do_POST = do_PUT = handle_one

    # --- what a behaviour does ---------------------------------------------------
    def send(self, status: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def endless(self, status: int, headers: Optional[dict] = None,
                length: Optional[int] = None) -> None:
        """A body that goes on until the client hangs up (or CAP is sent)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length or CAP))
        self.end_headers()
        chunk = b"x" * (64 << 10)
        try:
            while self.server.sent < CAP:
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
        except OSError:
            pass
        self.close_connection = True

    def trickle(self, data: bytes, every: float) -> None:
        """data, one byte at a time, until the client hangs up."""
        try:
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behave: Callable[[Handler], None],
                 tls: Optional[ssl.SSLContext] = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behave, self.tls = behave, tls
        self.log: List[Tuple[str, str, str, Optional[str]]] = []
        self.sent = 0
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass        # a client that hangs up mid-body is what these tests do


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    with threaded() as start:
        def serve_one(behave: Callable[[Handler], None],
                      tls: Optional[ssl.SSLContext] = None) -> Server:
            return start(Server(behave, tls))  # type: ignore[no-any-return]
        yield serve_one


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tuple[ssl.SSLContext, str]:
    """A server context for 127.0.0.1, and a --cert-dir that trusts it."""
    base = tmp_path_factory.mktemp("tls")
    (base / "certs").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(base / "key.pem"), "-out", str(base / "certs" / "ca.crt"),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(base / "certs" / "ca.crt"), str(base / "key.pem"))
    return context, str(base / "certs")


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client_of(server: Server, **options: object) -> Client:
    options.setdefault("tls_verify", False)
    return Client(parse(f"{server.host}/app:v1"), Options(**options))  # type: ignore[arg-type]


def manifest_of(client: Client) -> bytes:
    return client.manifest("v1", (MANIFEST,))[0]


def finished_within(seconds: float, work: Callable[[], object]) -> BaseException:
    """Runs work in a thread; it must end (with an exception) within seconds."""
    failure: List[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:       # noqa: B902 - handed to the test
            failure.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert failure, "it did not fail"
    return failure[0]


# --- 3: bodies that are only dropped are read a few KiB at most ---------------------------
def test_a_401_body_without_end_is_not_read(serve: Callable[..., Server]) -> None:
    def behave(h: Handler) -> None:
        if h.headers.get("Authorization") != basic():
            h.endless(401, {"WWW-Authenticate": 'Basic realm="r"'})
        else:
            h.send(200, b"{}", {"Content-Type": MANIFEST})
    server = serve(behave)
    assert manifest_of(client_of(server, creds=f"{USER}:{PASSWORD}")) == b"{}"
    assert server.sent < 16 << 20


def test_a_redirect_body_without_end_is_not_read(serve: Callable[..., Server]) -> None:
    def behave(h: Handler) -> None:
        if h.path.endswith("/v1"):
            h.endless(302, {"Location": "/v2/app/manifests/moved"})
        else:
            h.send(200, b"{}", {"Content-Type": MANIFEST})
    server = serve(behave)
    assert manifest_of(client_of(server)) == b"{}"
    assert server.sent < 16 << 20


def test_a_retried_503_body_without_end_is_not_read(serve: Callable[..., Server]) -> None:
    def behave(h: Handler) -> None:
        if sum(p == h.path for _, _, p, _ in h.server.log) == 1:
            h.endless(503)
        else:
            h.send(200, b"{}", {"Content-Type": MANIFEST})
    server = serve(behave)
    assert manifest_of(client_of(server)) == b"{}"
    assert server.sent < 16 << 20


def test_the_v2_probe_body_without_end_is_not_read(serve: Callable[..., Server],
                                                   tls: Tuple[ssl.SSLContext, str]) -> None:
    def behave(h: Handler) -> None:
        if h.path == "/v2/":
            h.endless(200)
        else:
            h.send(200, b"{}", {"Content-Type": MANIFEST})
    server = serve(behave, tls[0])
    assert manifest_of(client_of(server, tls_verify=False)) == b"{}"
    assert server.sent < 16 << 20


# --- 4: never https to http, never credentials elsewhere ---------------------------------
def test_https_never_leads_to_plain_http(serve: Callable[..., Server],
                                         tls: Tuple[ssl.SSLContext, str]) -> None:
    def behave(h: Handler) -> None:
        if h.scheme == "https" and h.headers.get("Authorization") != basic():
            h.send(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        elif h.scheme == "https":
            h.send(302, headers={"Location": f"http://{h.server.host}/v2/app/manifests/plain"})
        else:
            h.send(200, b"{}", {"Content-Type": MANIFEST})
    server = serve(behave, tls[0])
    client = client_of(server, creds=f"{USER}:{PASSWORD}", cert_dir=tls[1], tls_verify=True)
    with pytest.raises(RegistryError) as e:
        manifest_of(client)
    assert "plain HTTP" in e.value.message and "refused" in e.value.message
    assert [entry for entry in server.log if entry[0] == "http"] == []


def test_an_http_token_realm_of_a_tls_registry_is_refused(serve: Callable[..., Server],
                                                          tls: Tuple[ssl.SSLContext, str]) -> None:
    def behave(h: Handler) -> None:
        if h.scheme == "https":
            h.send(401, headers={"WWW-Authenticate":
                                 f'Bearer realm="http://{h.server.host}/token",service="s"'})
        else:
            h.send(200, json.dumps({"token": "t"}).encode())
    server = serve(behave, tls[0])
    client = client_of(server, creds=f"{USER}:{PASSWORD}", cert_dir=tls[1], tls_verify=True)
    with pytest.raises(RegistryError) as e:
        manifest_of(client)
    assert "plain HTTP" in e.value.message
    assert [entry for entry in server.log if entry[0] == "http"] == []


def test_credentials_never_follow_a_redirect(serve: Callable[..., Server]) -> None:
    other = serve(lambda h: h.send(200, b"{}", {"Content-Type": MANIFEST}))

    def behave(h: Handler) -> None:
        if h.headers.get("Authorization") != basic():
            h.send(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        else:
            h.send(307, headers={"Location": f"http://{other.host}/blob"})
    server = serve(behave)
    assert manifest_of(client_of(server, creds=f"{USER}:{PASSWORD}")) == b"{}"
    assert other.log == [("http", "GET", "/blob", None)]


# --- 5: a blob is read to its declared size, and a layer must declare one ---------------
def test_a_blob_is_read_no_further_than_its_size(serve: Callable[..., Server]) -> None:
    server = serve(lambda h: h.endless(200))
    reader = BlobReader(client_of(server), "sha256:" + "a" * 64, 134)
    with pytest.raises(DigestMismatch) as e:
        while reader.read(1 << 16):
            pass
    assert "134 bytes" in e.value.message
    assert server.sent < 16 << 20


def image_server(serve: Callable[..., Server], config: bytes,
                 layer: Optional[dict] = None) -> Server:
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    layer = layer or {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": "sha256:" + "b" * 64, "size": 10}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [layer],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)}}).encode()

    def behave(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.send(200, manifest, {"Content-Type": MANIFEST})
        elif h.path.endswith(config_digest):
            h.send(200, config)
        else:
            h.send(404)
    return serve(behave)


CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "c" * 64]}}).encode()


def test_a_layer_without_a_size_is_refused(serve: Callable[..., Server]) -> None:
    server = image_server(serve, CONFIG, {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                          "digest": "sha256:" + "b" * 64})
    with pytest.raises(BadArchive) as e:
        resolve(client_of(server), parse(f"{server.host}/app:v1"), ("linux", "amd64", None))
    assert "size" in e.value.message


# --- 6: deadlines -----------------------------------------------------------------------
@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("STACKO_REGISTRY_TIMEOUT", "1.5")
    return 1.5


def test_a_trickled_document_is_given_up(serve: Callable[..., Server], short: float) -> None:
    def behave(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.trickle(b"{" * 100000, 0.1)
    server = serve(behave)
    client = client_of(server)
    error = finished_within(12, lambda: manifest_of(client))
    assert isinstance(error, RegistryError), error
    assert "too slowly" in error.message and "STACKO_REGISTRY_TIMEOUT" in (error.hint or "")


def test_trickled_headers_are_given_up(serve: Callable[..., Server], short: float) -> None:
    server = serve(lambda h: h.trickle(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10000, 0.05))
    client = client_of(server)
    error = finished_within(12, lambda: manifest_of(client))
    assert isinstance(error, RegistryError), error
    assert "did not answer" in error.message
    assert len(server.log) == 1, "a deadline is not retried"


def test_a_trickled_blob_stalls(serve: Callable[..., Server], short: float) -> None:
    def behave(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10 << 20))
        h.end_headers()
        h.trickle(b"x" * (10 << 20), 0.05)
    server = serve(behave)

    def work() -> None:
        reader = BlobReader(client_of(server), "sha256:" + "a" * 64, 10 << 20)
        while reader.read(1 << 16):
            pass
    error = finished_within(12, work)
    assert isinstance(error, RegistryError), error
    assert "stalled" in error.message


def test_a_slow_blob_that_moves_is_not_stalled(serve: Callable[..., Server],
                                               short: float) -> None:
    piece = b"y" * 70000

    def behave(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(piece) * 6))
        h.end_headers()
        for _ in range(6):
            h.wfile.write(piece)
            h.wfile.flush()
            time.sleep(0.5)
    server = serve(behave)
    reader = BlobReader(client_of(server), "sha256:" + "a" * 64, len(piece) * 6)
    start, data = time.monotonic(), b""
    while True:
        chunk = reader.read(1 << 16)
        if not chunk:
            break
        data += chunk
    assert data == piece * 6
    assert time.monotonic() - start > short     # longer than the deadline, and still fine


# --- 7: malformed URLs and tokens, errors that name their source, no pointless retries --
@pytest.mark.parametrize("location", ["http://[::1/x", "http://127.0.0.1:abc/x",
                                      "http://127.0.0.1:99999/x", "http://h/a b"])
def test_a_malformed_redirect_is_an_error(serve: Callable[..., Server], location: str) -> None:
    server = serve(lambda h: h.send(302, headers={"Location": location}))
    with pytest.raises(RegistryError) as e:
        manifest_of(client_of(server))
    assert "redirect target" in e.value.message and "not a valid URL" in e.value.message


@pytest.mark.parametrize("realm", ["http://[::1/token", "http://127.0.0.1:abc/token",
                                   "ftp://127.0.0.1/token"])
def test_a_malformed_token_realm_is_an_error(serve: Callable[..., Server], realm: str) -> None:
    server = serve(lambda h: h.send(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'}))
    with pytest.raises(RegistryError) as e:
        manifest_of(client_of(server))
    assert "token service" in e.value.message


def test_a_token_with_a_line_break_is_refused(serve: Callable[..., Server]) -> None:
    def behave(h: Handler) -> None:
        if h.path.startswith("/token"):
            h.send(200, json.dumps({"token": "abc\r\nX-Evil: 1"}).encode())
        else:
            h.send(401, headers={"WWW-Authenticate": f'Bearer realm="http://{h.server.host}/token"'})
    server = serve(behave)
    with pytest.raises(RegistryError) as e:
        manifest_of(client_of(server))
    assert "the token service" in e.value.message and "not a valid bearer token" in e.value.message


@pytest.mark.parametrize("config", [b"\x00\x00\x00\x7b not json", b"\xff\xfe{\x00}\x00",
                                    b"\x00{\x00}"])
def test_a_config_that_is_not_json_says_so(serve: Callable[..., Server], config: bytes) -> None:
    server = image_server(serve, config)
    with pytest.raises(StackoError) as e:
        resolve(client_of(server), parse(f"{server.host}/app:v1"), ("linux", "amd64", None))
    assert "the config of" in e.value.message and "JSON" in e.value.message
    assert "codec" not in e.value.message and "utf-16" not in e.value.message


def test_an_unreadable_answer_is_not_retried(serve: Callable[..., Server]) -> None:
    def behave(h: Handler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
        h.close_connection = True
    server = serve(behave)
    with pytest.raises(RegistryError) as e:
        manifest_of(client_of(server))
    assert "not valid HTTP" in e.value.message
    assert len(server.log) == 1


def test_an_error_names_the_redirect_target(serve: Callable[..., Server]) -> None:
    other = serve(lambda h: h.send(400, b"no"))
    server = serve(lambda h: h.send(307, headers={"Location": f"http://{other.host}/blob"}))
    with pytest.raises(RegistryError) as e:
        manifest_of(client_of(server))
    assert f"the redirect target {other.host} answered GET" in e.value.message


def test_the_cli_prints_no_traceback_for_a_malformed_location(
        serve: Callable[..., Server], stacko: Runner) -> None:
    server = serve(lambda h: h.send(302, headers={"Location": "http://[::1/x"}))
    result = stacko("pull-image", "app", f"{server.host}/app:v1", "--tls-verify=false", rc=1)
    assert "the redirect target" in result.stderr


def test_a_bad_timeout_variable_is_an_error(serve: Callable[..., Server], stacko: Runner) -> None:
    result = stacko("pull-image", "app", "127.0.0.1:9/app:v1", rc=1,
                    env={"STACKO_REGISTRY_TIMEOUT": "soon"})
    assert "STACKO_REGISTRY_TIMEOUT" in result.stderr


# --- 16: the password from stdin or a file, never on the command line or in output -----
SECRET = "Xq7-very-secret"


def auth_server(serve: Callable[..., Server]) -> Server:
    def behave(h: Handler) -> None:
        if h.headers.get("Authorization") != basic(USER, SECRET):
            h.send(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        else:
            h.send(403, json.dumps({"errors": [{"code": "DENIED", "message": "no"}]}).encode())
    return serve(behave)


@pytest.mark.parametrize("command", ["pull-image", "push-image"])
def test_password_from_stdin(serve: Callable[..., Server], stacko: Runner, command: str) -> None:
    server = auth_server(serve)
    if command == "push-image":
        stacko("new-image", "app")
    result = stacko("-v", command, "app", f"{server.host}/app:v1", "--tls-verify=false",
                    "--creds", USER, "--password-stdin", input=f"{SECRET}\n".encode(), rc=1)
    assert "denies" in result.stderr, result.stderr
    assert basic(USER, SECRET) in [auth for _, _, _, auth in server.log]
    assert SECRET not in result.stdout + result.stderr


def test_password_from_a_file(serve: Callable[..., Server], stacko: Runner,
                              workdir: Path) -> None:
    server = auth_server(serve)
    (workdir / "pw").write_text(SECRET + "\n")
    result = stacko("-v", "pull-image", "app", f"{server.host}/app:v1", "--tls-verify=false",
                    "--creds", USER, "--password-file", str(workdir / "pw"), rc=1)
    assert basic(USER, SECRET) in [auth for _, _, _, auth in server.log]
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("creds", [[], ["--creds", f"{USER}:{SECRET}"]])
def test_password_stdin_needs_the_user_alone(stacko: Runner, creds: List[str]) -> None:
    result = stacko("pull-image", "app", "127.0.0.1:9/app:v1", *creds, "--password-stdin",
                    input=b"x\n", rc=2)
    assert "--creds USER" in result.stderr
    assert SECRET not in result.stderr
