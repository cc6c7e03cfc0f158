"""Unit tests of the registry client (no root, no real registry): Bearer-token
auth against a small token service, the auth files, REF parsing."""
from __future__ import annotations

import base64
import io
import os
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List

import pytest

from stacko.errors import UsageError
from stacko.registry.client import Client, Options, Unauthorized, auth_entry, parse_challenge
from stacko.registry.ref import parse

TOKEN = "tok-123"
USER, PASSWORD = "ci", "pw"


class Handler(BaseHTTPRequestHandler):
    """/token gives a token for Basic ci:pw; /v2/… wants that token."""
    seen: List[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Handler.seen.append(self.path)
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != good:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"token": TOKEN}).encode()
        elif auth != f"Bearer {TOKEN}":
            host = self.headers["Host"]
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",'
                                                 f'service="test",scope="repository:app:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body = b'{"schemaVersion": 2}'
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.seen = []
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_bearer_token_from_the_realm(server: str) -> None:
    client = Client(parse(f"{server}/app:v1"), Options(creds=f"{USER}:{PASSWORD}",
                                                       tls_verify=False))
    body, media = client.manifest("v1", ("application/vnd.oci.image.manifest.v1+json",))
    assert json.loads(body) == {"schemaVersion": 2}
    assert any(p.startswith("/token?") and "service=test" in p and "scope=repository" in p
               for p in Handler.seen)
    # the token is kept: a second request asks no token service again
    before = len([p for p in Handler.seen if p.startswith("/token")])
    client.manifest("v1", ("application/vnd.oci.image.manifest.v1+json",))
    assert len([p for p in Handler.seen if p.startswith("/token")]) == before


def test_meanwhile_runs_once_while_the_registry_answers(server: str) -> None:
    """Client.manifest(meanwhile=F): F runs once, after the request has reached
    the registry and before its answer is read (pull-image prepares its
    signature check there); the 401 and the token that follow run it no more."""
    import time
    client = Client(parse(f"{server}/app:v1"), Options(creds=f"{USER}:{PASSWORD}",
                                                       tls_verify=False))
    path = "/v2/app/manifests/v1"
    calls: List[bool] = []

    def meanwhile() -> None:
        end = time.monotonic() + 10
        while path not in Handler.seen and time.monotonic() < end:
            time.sleep(0.01)
        calls.append(path in Handler.seen)       # sent before: the registry has it
    body, _ = client.manifest("v1", ("application/vnd.oci.image.manifest.v1+json",),
                              meanwhile=meanwhile)
    assert json.loads(body) == {"schemaVersion": 2}
    assert calls == [True]
    assert Handler.seen.count(path) == 2 and any(p.startswith("/token") for p in Handler.seen)


def test_bearer_token_refused(server: str) -> None:
    client = Client(parse(f"{server}/app:v1"), Options(creds="ci:wrong", tls_verify=False))
    with pytest.raises(Unauthorized) as e:
        client.manifest("v1", ("application/vnd.oci.image.manifest.v1+json",))
    assert "--creds" in (e.value.hint or "")


def test_auth_entry_takes_the_most_specific() -> None:
    def enc(text: str) -> dict:
        return {"auth": base64.b64encode(text.encode()).decode()}
    auths = {"reg.example:5000": enc("a:1"), "reg.example:5000/team": enc("b:2"),
             "https://other.example/v1/": enc("c:3")}
    assert auth_entry(auths, "reg.example:5000", "team/app") == ("b", "2")
    assert auth_entry(auths, "reg.example:5000", "tools/app") == ("a", "1")
    assert auth_entry(auths, "other.example", "x") == ("c", "3")
    assert auth_entry(auths, "none.example", "x") is None


def test_parse_challenge() -> None:
    assert parse_challenge('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"') \
        == ("bearer", {"realm": "https://a/token", "service": "reg",
                       "scope": "repository:x:pull"})
    assert parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})


@pytest.mark.parametrize("text,host,repo,tag,digest", [
    ("localhost:5000/a/b", "localhost:5000", "a/b", "latest", None),
    ("docker://reg.example/x:v1", "reg.example", "x", "v1", None),
    ("[::1]:5000/x:1", "[::1]:5000", "x", "1", None),
    ("reg.example/x@sha256:" + "a" * 64, "reg.example", "x", None, "sha256:" + "a" * 64),
])
def test_ref(text: str, host: str, repo: str, tag: str, digest: str) -> None:
    ref = parse(text)
    assert (ref.host, ref.repo, ref.tag, ref.digest) == (host, repo, tag, digest)


@pytest.mark.parametrize("text", ["debian:12", "library/debian", "reg.example/", "h:99999/a",
                                  "reg.example/a:b:c", "reg.example/Up"])
def test_bad_ref(text: str) -> None:
    with pytest.raises(UsageError):
        parse(text)


class Flaky(BaseHTTPRequestHandler):
    """The first request of each path fails with 503; a blob's first download
    breaks off half-way, and a Range request gets the rest."""
    BLOB = bytes(range(256)) * 4096
    calls: List[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Flaky.calls.append(f"{self.path} {self.headers.get('Range')}")
        if Flaky.calls.count(f"{self.path} None") == 1 and "manifests" in self.path:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        wanted = self.headers.get("Range")
        if wanted:
            start = int(wanted.split("=")[1].rstrip("-"))
            data = self.BLOB[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.BLOB) - 1}/{len(self.BLOB)}")
        else:
            data = self.BLOB
            self.send_response(200)
        body = data if "blobs" in self.path else b"{}"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if "blobs" in self.path and not wanted:
            self.wfile.write(body[:len(body) // 2])       # and the connection ends
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def flaky() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Flaky.calls = []
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_5xx_is_retried(flaky: str) -> None:
    client = Client(parse(f"{flaky}/app:v1"), Options(tls_verify=False))
    body, _ = client.manifest("v1", ("application/json",))
    assert body == b"{}"
    assert sum("manifests/v1" in c for c in Flaky.calls) == 2


def test_a_broken_blob_download_resumes_with_a_range(flaky: str) -> None:
    import hashlib
    from stacko.registry.pull import BlobReader
    client = Client(parse(f"{flaky}/app:v1"), Options(tls_verify=False))
    digest = "sha256:" + hashlib.sha256(Flaky.BLOB).hexdigest()
    reader = BlobReader(client, digest, len(Flaky.BLOB))
    data = b""
    while True:
        chunk = reader.read(1 << 16)
        if not chunk:
            break
        data += chunk
    assert data == Flaky.BLOB
    assert any(c.endswith(f"bytes={len(Flaky.BLOB) // 2}-") for c in Flaky.calls)


def test_auth_files_are_where_podman_reads_them(monkeypatch, tmp_path) -> None:
    from stacko.registry.auth import auth_files
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert auth_files(None) == ["/run/user/7/containers/auth.json",
                                f"{tmp_path}/.config/containers/auth.json",
                                f"{tmp_path}/.docker/config.json"]
    # Without XDG_RUNTIME_DIR (root under systemd): /run/containers/UID/auth.json, as
    # `podman login` writes it (strace shows it opening that path).
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert auth_files(None)[:2] == [f"/run/containers/{os.getuid()}/auth.json",
                                    f"{tmp_path}/cfg/containers/auth.json"]
    assert auth_files("/etc/stacko/auth.json") == ["/etc/stacko/auth.json"]


def test_creds_without_a_password_and_no_terminal_point_at_an_auth_file(monkeypatch) -> None:
    from stacko.registry import auth, client
    monkeypatch.setattr("sys.stdin", io.StringIO(""))          # no terminal
    with pytest.raises(client.RegistryError) as e:
        auth.credentials(auth.Options(creds="admin"), "registry.example", "app")
    assert "there is no terminal to ask for it" in e.value.message
    # never "put the password on the command line", where ps shows it
    assert "--password-stdin" in e.value.hint and "--authfile FILE" in e.value.hint
    assert "USER:PASS" not in e.value.hint


def test_a_missing_auth_file_is_named_as_the_shell_reads_it() -> None:
    from stacko.registry import auth
    with pytest.raises(auth.RegistryError) as e:
        auth.credentials(auth.Options(authfile="/no/such\nauth file"), "registry.example", "a")
    assert e.value.message == "the auth file '/no/such'$'\\n''auth file' does not exist"


def test_a_query_is_spelt_as_urlencode_spells_it() -> None:
    """transport.query writes plain digests and repositories itself (no
    urllib.parse on a push): byte for byte what urlencode writes, for those and
    for anything else."""
    import urllib.parse

    from hypothesis import given, settings, strategies as st

    from stacko.registry.transport import query
    text = st.text(alphabet=st.sampled_from(sorted("abcAZ09._-:/ +&=?%é\n")), max_size=12)

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(text, text), max_size=3))
    def same(pairs: list) -> None:
        assert query(pairs) == urllib.parse.urlencode(pairs)
    same()
    pairs = [("mount", "sha256:" + "a" * 64), ("from", "team/app.v1_x-y")]
    assert query(pairs) == urllib.parse.urlencode(pairs)


def test_plain_upload_locations_are_read_as_urllib_reads_them() -> None:
    """transport reads a plain URL (a registry's upload location) without
    urllib.parse: the same scheme, netloc, path and joined URL as urllib's."""
    import urllib.parse

    from hypothesis import given, settings, strategies as st

    from stacko.errors import StackoError
    from stacko.registry import transport

    def by_urllib(url: str) -> tuple:
        parts = urllib.parse.urlsplit(url)
        parts.port
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError(url)
        return parts.scheme, parts.netloc, urllib.parse.urlunsplit(
            ("", "", parts.path or "/", parts.query, ""))
    piece = st.text(alphabet=st.sampled_from(sorted("aZ09.-_~/?=&%+:,#;@[] \\é")), max_size=10)
    host = st.sampled_from(["h", "reg.example", "127.0.0.1", "H.Example", "-h", "h.", "[::1]",
                            "a@b", ""])
    port = st.sampled_from(["", ":5000", ":0", ":65535", ":65536", ":x", ":", ":080"])
    scheme = st.sampled_from(["http://", "https://", "ftp://", "HTTP://", ""])

    @settings(max_examples=1500, deadline=None)
    @given(scheme, host, port, piece, piece)
    def same(s: str, h: str, p: str, path: str, location: str) -> None:
        url = f"{s}{h}{p}{path}"
        try:
            expected = by_urllib(url)
        except ValueError:
            expected = None
        if transport.plain_url(url) is not None:
            assert transport.plain_url(url) == expected, url
        if expected is not None:
            try:
                assert transport.parse_url(url, "it") == expected, url
            except StackoError:
                pass            # refused for its characters before urllib is asked
            for loc in (location, "/" + location, f"{s}{h}{p}/{location}"):
                try:
                    joined = urllib.parse.urljoin(url, loc)
                except ValueError:
                    with pytest.raises(StackoError):
                        transport.join_url(url, loc, "it")
                    continue
                assert transport.join_url(url, loc, "it") == joined, (url, loc)
    same()
    location = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/9f-1?_state=QmFz%3D%3D&digest=x"
    assert transport.plain_url(location) == by_urllib(location)
