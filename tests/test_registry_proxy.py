"""push-image and pull-image against the loopback registry seen through a
proxy that misbehaves in one way: a registry that refuses a cross-repository
mount with 403 (the credentials may not read the source repository) still
takes the push, the blobs uploaded instead; a blob answered in a body that is
not valid HTTP fails the pull at once, with a clear message, without asking
four more times."""
from __future__ import annotations

import http.client
import re
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from conftest import Runner
from ocigen import d, f, write_layout
from registryd import Registry, available, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)
from servers import threaded

pytestmark = pytest.mark.skipif(
    not (available() and shutil.which("skopeo")),
    reason="docker-registry and skopeo are needed (tests/install-deps.sh)")

HOPS = ("connection", "keep-alive", "transfer-encoding", "content-length")


class Forward(BaseHTTPRequestHandler):
    """Passes each request on to the registry, unless the proxy's hook answers it."""
    protocol_version = "HTTP/1.1"
    server: "Proxy"

    def log_message(self, *args: object) -> None:
        pass

    def handle_one(self) -> None:
        self.server.log.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.hook(self):
            return
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOPS}
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOPS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one


class Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, hook: Callable[[Forward], bool]) -> None:
        super().__init__(("127.0.0.1", 0), Forward)
        self.upstream, self.hook = upstream, hook
        self.log: List[Tuple[str, str]] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Callable[[Callable[[Forward], bool]], Proxy]]:  # noqa: F811
    with threaded() as serve:
        yield lambda hook: serve(Proxy(registry.host, hook))


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Dict[str, object]:
    layout = tmp_path_factory.mktemp("proxied") / "v1"
    write_layout(layout, [[d("etc"), f("etc/os-release", b"ID=proxied\n")],
                          [d("srv"), f("srv/page", b"p" * 50000)]], ref="v1")
    skopeo_push(registry, f"oci:{layout}:v1", "proxied/app:v1")
    return {"layout": layout}


def refuse_mounts(seen: List[str]) -> Callable[[Forward], bool]:
    def hook(h: Forward) -> bool:
        if h.command == "POST" and "mount=" in h.path:
            seen.append(h.path)
            body = (b'{"errors":[{"code":"DENIED","message":"requested access to the '
                    b'resource is denied"}]}')
            h.send_response(403)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return True
        return False
    return hook


@pytest.mark.mounts
def test_a_mount_refused_with_403_falls_back_to_an_upload(
        stacko: Runner, registry: Registry, pushed: Dict[str, object],  # noqa: F811
        proxy: Callable[..., Proxy]) -> None:
    refused: List[str] = []
    through = proxy(refuse_mounts(refused))
    stacko("pull-image", "app", f"{through.host}/proxied/app:v1", "--tls-verify=false")
    # The image came from proxied/app: pushing it to another repository of the
    # same registry tries to mount its blobs from there, which is refused.
    r = stacko("-v", "push-image", "app", f"{through.host}/other/app:v1", "--tls-verify=false")
    assert r.out == ""
    assert refused, "no mount was asked for"
    assert "uploading it instead" in r.stderr
    assert re.search(r"^stacko: pushed 2 of 2 layers, .* 0 mounted$", r.stderr, re.M), r.stderr
    # What was pushed pulls back, through the registry itself.
    r = stacko("pull-image", "back", f"{registry.host}/other/app:v1", "--tls-verify=false")
    assert re.search(r"^stacko: pulled \d of 2 layers", r.stderr, re.M), r.stderr


def malformed_blob(layer: str, gets: List[str]) -> Callable[[Forward], bool]:
    """The layer's GET answered with a chunked body whose chunk size is not a number."""
    def hook(h: Forward) -> bool:
        if h.command == "GET" and h.path.endswith(layer):
            gets.append(h.path)
            h.send_response(200 if "Range" not in h.headers else 206)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.wfile.write(b"10\r\n" + b"\x1f" * 16 + b"\r\nzz-not-a-size\r\n")
            h.wfile.flush()
            h.close_connection = True
            return True
        return False
    return hook


def top_layer(layout: Path) -> str:
    import json
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" /
                           index["manifests"][0]["digest"][7:]).read_text())
    return manifest["layers"][-1]["digest"]


@pytest.mark.mounts
def test_a_malformed_blob_answer_fails_at_once(
        stacko: Runner, root: Path, pushed: Dict[str, object],
        proxy: Callable[..., Proxy]) -> None:
    gets: List[str] = []
    layer = top_layer(pushed["layout"])  # type: ignore[arg-type]
    through = proxy(malformed_blob(layer, gets))
    r = stacko("pull-image", "app", f"{through.host}/proxied/app:v1", "--tls-verify=false",
               rc=1)
    assert len(gets) == 1, gets                     # asked once, not resumed four times
    assert "not valid HTTP" in r.stderr and "chunk size" in r.stderr, r.stderr
    assert "broke off" not in r.stderr
    assert stacko("list-images").out == ""        # nothing recorded


def test_a_broken_connection_is_still_resumed() -> None:
    """Only what is not HTTP fails at once: a connection cut short is the
    network's failure, and the rest is asked for again (Range)."""
    from stacko.registry.transport import transient
    from stacko.registry.wire import CutShort, LineTooLong, MalformedResponse
    assert transient(CutShort("cut")) and transient(ConnectionResetError())
    assert not transient(MalformedResponse("bad")) and not transient(LineTooLong("long"))


