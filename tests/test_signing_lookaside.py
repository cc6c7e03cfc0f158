"""registries.d and the lookaside, without a registry: the YAML subset, merging
and precedence as containers/image has them; reads bounded in count, bytes
and time; writes never over another signature."""
from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from stacko.signing import lookaside, registriesd
from stacko.signing.dockerref import parse_normalized

DIGEST = "sha256:" + "c" * 64


# --- registries.d ---------------------------------------------------------------------------
def write(d: Path, files: Dict[str, str]) -> str:
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return str(d)


def test_precedence_and_merging(tmp_path: Path) -> None:
    d = write(tmp_path / "r", {
        "a.yaml": "docker:\n  reg.io/ns/app:v1:\n    lookaside: file:///exact\n"
                  "  reg.io/ns:\n    lookaside: https://sigs.example.com/ns\n"
                  "    lookaside-staging: file:///staging\n",
        "b.yaml": "# the fallback\ndefault-docker:\n  sigstore: 'file:///default'\n"
                  "  sigstore-staging: \"file:///default-staging\"\n",
        "ignored.yml": "this: [is not read]\n"})
    config = registriesd.load(d)
    base = registriesd.lookaside_base
    assert base(config, parse_normalized("reg.io/ns/app:v1")) == "file:///exact"
    assert base(config, parse_normalized("reg.io/ns/app:v2")) == "https://sigs.example.com/ns"
    assert base(config, parse_normalized("reg.io/ns/app:v2"), write=True) == "file:///staging"
    assert base(config, parse_normalized("other.io/x:1")) == "file:///default"
    assert base(config, parse_normalized("other.io/x:1"), write=True) == \
        "file:///default-staging"
    assert base(registriesd.load(str(tmp_path / "none")), parse_normalized("a.io/b:c")) == \
        (registriesd.ROOT_LOOKASIDE if os.geteuid() == 0 else base(
            registriesd.Config(None, {}), parse_normalized("a.io/b:c")))


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "docker:\n  - reg.io\n"}, "expected KEY: VALUE"),
    ({"a.yaml": "docker: [reg.io]\n"}, "only mappings"),
    ({"a.yaml": "default-docker:\n  lookside: file:///x\n"}, "unknown key 'lookside'"),
    ({"a.yaml": "other: 1\n"}, "unknown key 'other'"),
    ({"a.yaml": "docker:\n  reg.io:\n    use-sigstore-attachments: maybe\n"}, "true or false"),
    ({"a.yaml": "default-docker:\n  lookaside: a\n  lookaside: b\n"}, "defined twice"),
    ({"a.yaml": "default-docker:\n  lookaside: &x a\n"}, "only mappings"),
    ({"a.yaml": "default-docker:\n  lookaside: |\n    file:///x\n"}, "only mappings"),
    ({"a.yaml": "default-docker:\n  lookaside: a\n", "b.yaml": "default-docker:\n  lookaside: b\n"},
     "defined both"),
    ({"a.yaml": "docker:\n  reg.io: {}\n", "b.yaml": "docker:\n  reg.io:\n    lookaside: x\n"},
     "defined both"),
    ({"a.yaml": "docker:\n\treg.io: {}\n"}, "tab"),
])
def test_what_is_not_the_subset_is_an_error(tmp_path: Path, files: Dict[str, str],
                                            message: str) -> None:
    with pytest.raises(registriesd.RegistriesDError, match=message):
        registriesd.load(write(tmp_path / "r", files))


# --- lookaside: files ---------------------------------------------------------------------------
def test_file_lookaside_write_and_read(tmp_path: Path) -> None:
    base = f"file://{tmp_path}/sigs"
    assert lookaside.read(base, "ns/app", DIGEST) == []
    url = lookaside.write(base, "ns/app", DIGEST, b"one")
    assert url.endswith(f"/ns/app@sha256={'c' * 64}/signature-1")
    assert lookaside.write(base, "ns/app", DIGEST, b"one") == url     # no second copy
    assert lookaside.write(base, "ns/app", DIGEST, b"two").endswith("signature-2")
    assert lookaside.read(base, "ns/app", DIGEST) == [b"one", b"two"]
    with pytest.raises(lookaside.LookasideError, match="only to a file://"):
        lookaside.write("https://x.io/s", "ns/app", DIGEST, b"x")


def test_a_fifo_in_the_lookaside_is_refused_not_waited_for(tmp_path: Path) -> None:
    d = tmp_path / f"app@sha256={'c' * 64}"
    d.mkdir()
    os.mkfifo(d / "signature-1")
    with pytest.raises(lookaside.LookasideError, match="not a regular file"):
        lookaside.read(f"file://{tmp_path}", "app", DIGEST)


# --- lookaside: HTTP ----------------------------------------------------------------------------
class Handler(http.server.BaseHTTPRequestHandler):
    files: Dict[str, bytes] = {}
    stall = 0.0

    def do_GET(self) -> None:
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/moved"):])
            self.end_headers()
            return
        if self.path.startswith("/broken/"):
            self.send_response(500)
            self.end_headers()
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.stall:          # a byte at a time, each well within a socket timeout
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(self.stall)
            except (BrokenPipeError, ConnectionResetError):
                pass            # the reader gave up at its deadline, as it should
        else:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.files, Handler.stall = {}, 0.0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def sig_path(n: int, repo: str = "app") -> str:
    return f"/{repo}@sha256={'c' * 64}/signature-{n}"


def test_http_lookaside_reads_until_the_first_missing(server: str) -> None:
    Handler.files = {sig_path(1): b"a", sig_path(2): b"b", sig_path(4): b"d"}
    assert lookaside.read(server, "app", DIGEST) == [b"a", b"b"]
    assert lookaside.read(server + "/moved", "app", DIGEST) == [b"a", b"b"]
    with pytest.raises(lookaside.LookasideError, match="HTTP 500"):
        lookaside.read(server + "/broken", "app", DIGEST)


def test_http_lookaside_is_bounded(server: str) -> None:
    Handler.files = {sig_path(1): b"x" * (lookaside.MAX_SIGNATURE + 1)}
    with pytest.raises(lookaside.LookasideError, match="larger than"):
        lookaside.read(server, "app", DIGEST)
    Handler.files = {sig_path(n): b"s" for n in range(1, lookaside.MAX_SIGNATURES + 2)}
    with pytest.raises(lookaside.LookasideError, match="more than 128"):
        lookaside.read(server, "app", DIGEST)
    Handler.files, Handler.stall = {sig_path(1): b"slow" * 100}, 0.2
    start = time.monotonic()
    with pytest.raises(lookaside.LookasideError, match="timed out"):
        lookaside.read(server, "app", DIGEST, deadline=1.0)
    # The whole body would take 80 s (and a per-read timeout would never fire):
    # 10 s leaves room for a loaded machine and still fails without the deadline.
    assert time.monotonic() - start < 10.0


# --- no policy at all ---------------------------------------------------------------------------
def test_no_policy_anywhere_accepts_and_imports_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from stacko.registry import pull
    monkeypatch.setattr(pull, "POLICY", str(tmp_path / "absent.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pull.trust_checker("reg.io/a:b", None, None) is None
    (tmp_path / ".config" / "containers").mkdir(parents=True)
    (tmp_path / ".config" / "containers" / "policy.json").write_text(
        '{"default": [{"type": "reject"}]}')
    checker = pull.trust_checker("reg.io/a:b", None, None)
    assert checker is not None and checker.policy.path.startswith(str(tmp_path))


# --- URLs read without urllib.parse -----------------------------------------------------------
URL_CHARS = "abcAZ09/:%?#;@=.-+ \\\t\n\r\x00\x7f\u00e9\u2028"


@pytest.mark.parametrize("seed", range(4))
def test_lookaside_urls_read_as_urllib_reads_them(seed: int) -> None:
    """scheme_of and the file: path are urlsplit's (and unquote's), held to them
    on generated URLs: they skip urllib.parse (~2 ms of a signed pull) only
    where nothing in the URL needs it."""
    import random
    from urllib.parse import unquote, urlsplit
    rnd = random.Random(seed)
    urls = ["file:///var/lib/sigs/a@sha256=00/signature-1", "FILE:///x", "file://localhost/x",
            "file://other/x", "file:/x", "file:x", "https://h:5/x?q#f", "file:///a%20b",
            "file:///a?b", "file:///a#b", "1x://y", " file:///x", ""]
    for _ in range(5000):
        body = "".join(rnd.choice(URL_CHARS) for _ in range(rnd.randint(0, 14)))
        urls += ["file:" + body, "file://" + body, body]
    for url in urls:
        assert lookaside.scheme_of(url) == urlsplit(url).scheme, repr(url)
        parts = urlsplit(url)
        if parts.scheme != "file":
            continue
        if parts.netloc in ("", "localhost"):
            assert lookaside._file_path(url) == unquote(parts.path), repr(url)
        else:
            with pytest.raises(lookaside.LookasideError):
                lookaside._file_path(url)
