"""A registry's name, looked up within the connection's time (lean.lookup).

The C library's resolver has no bound of ours: with a name server that never
answers, glibc waits ``timeout x attempts x name servers`` of resolv.conf.
Here, in the tests' private mount namespace, /etc/resolv.conf is bound over by
one that names a UDP socket of the test on 127.0.0.1:53 (which reads queries
and never answers) with ``options timeout:30 attempts:1``, and
/etc/nsswitch.conf by one whose hosts line reaches dns; a lookup of a name
absent from /etc/hosts then hangs 30 s, unless stacko gives up first.
"""
from __future__ import annotations

import errno
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import IS_ROOT, Runner, snapshot
from stacko import lean
from stacko.errors import LookupTimeout
from stacko.registry.http1 import Connection

NAME = "registry.invalid-stacko.test"      # .test: never a real name (RFC 6761)
HANGS = 30                                 # seconds the resolver would wait
BOUND = 15                                 # well under HANGS: what the tests allow


@pytest.fixture
def dead_resolver(tmp_path: Path) -> Iterator[socket.socket]:
    """A name server on 127.0.0.1:53 that never answers, the only one this
    namespace's resolver asks; the socket, to read the queries it got."""
    if not IS_ROOT:
        pytest.skip("binds /etc/resolv.conf over in a private mount namespace: needs root")
    with open("/etc/hosts") as f:
        assert NAME not in f.read()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 53))
    except OSError as e:
        server.close()
        if e.errno == errno.EADDRINUSE:
            pytest.skip("127.0.0.1:53 is taken, and resolv.conf cannot name another port")
        raise
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.1\noptions timeout:{HANGS} attempts:1\n")
    nsswitch = tmp_path / "nsswitch.conf"
    lines = Path("/etc/nsswitch.conf").read_text().splitlines() \
        if os.path.exists("/etc/nsswitch.conf") else []
    nsswitch.write_text("".join(line + "\n" for line in lines
                                if not line.lstrip().startswith("hosts:"))
                        + "hosts: files dns\n")
    bound = []
    try:
        for made, path in ((resolv, "/etc/resolv.conf"), (nsswitch, "/etc/nsswitch.conf")):
            if not os.path.exists(path):
                Path(path).touch()
            subprocess.run(["mount", "--bind", str(made), path], check=True)
            bound.append(path)
        yield server
    finally:
        for path in reversed(bound):
            subprocess.run(["umount", path], check=True)
        server.close()


def queries(server: socket.socket) -> list[bytes]:
    """The queries the dead name server got (that the lookup did reach it)."""
    got = []
    server.setblocking(False)
    while True:
        try:
            got.append(server.recv(512))
        except BlockingIOError:
            return got


@pytest.mark.mounts
@pytest.mark.parametrize("tls", ["--tls-verify=true", "--tls-verify=false"])
def test_a_lookup_that_hangs_is_given_up(dead_resolver: socket.socket, stacko: Runner,
                                         root: Path, tls: str) -> None:
    stacko("new-image", "base")
    before = snapshot(root)
    started = time.monotonic()
    result = stacko("pull-image", "app", f"{NAME}:5000/x:y", tls, rc=1,
                    env={"STACKO_REGISTRY_TIMEOUT": "2"})
    took = time.monotonic() - started
    assert took < BOUND, f"pull-image gave up after {took:.1f} s"
    assert result.stderr.startswith(f"stacko: error: looking up the address of {NAME} did "
                                    f"not finish within 2 s\nstacko: hint: "), result.stderr
    assert result.stdout == ""
    assert snapshot(root) == before                     # nothing recorded
    assert stacko("list-images").stdout.split() == ["base"]
    assert any(NAME.split(".")[0].encode() in q for q in queries(dead_resolver)), \
        "the lookup never reached the name server: this test tests nothing"


@pytest.mark.mounts
def test_each_path_bounds_the_lookup(dead_resolver: socket.socket) -> None:
    """lean.connect (plain HTTP, the sniff), and http1's TLS connection (a
    registry, a token service, a sigstore lookaside) alike."""
    for connect in (lambda: lean.connect(NAME.encode(), 80, 1.0),
                    lambda: lean.connect(NAME, 443, 0.5, within=1.0),
                    lambda: Connection(f"{NAME}:443", 1.0).connect(),
                    lambda: Connection(NAME, 1.0, context=ssl.create_default_context()).connect()):
        started = time.monotonic()
        with pytest.raises(LookupTimeout) as e:
            connect()
        assert time.monotonic() - started < BOUND
        assert e.value.message == f"looking up the address of {NAME} did not finish within 1 s"
        assert "resolv.conf" in (e.value.hint or "")


def test_a_numeric_address_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 and ::1 are parsed, not looked up: no thread, as before."""
    import _thread

    def no_thread(*args: object) -> None:
        raise AssertionError("a numeric address was looked up on a thread")
    monkeypatch.setattr(_thread, "start_new_thread", no_thread)
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = socket.create_server((host, 0), family=family)
        except OSError:
            continue            # no IPv6 here
        with listener:
            port = listener.getsockname()[1]
            for name in (host, host.encode()):
                sock = lean.connect(name, port, 2.0)
                peer, _ = listener.accept()
                sock.sendall(b"ping")                   # type: ignore[attr-defined]
                assert peer.recv(4) == b"ping"
                sock.close()                            # type: ignore[attr-defined]
                peer.close()
    assert lean.lookup("127.0.0.1", 80, 1.0)[0][4] == ("127.0.0.1", 80)


def test_a_name_is_looked_up_on_a_thread_and_connected() -> None:
    """localhost (from /etc/hosts) goes through the thread and connects; a name
    that does not resolve raises the resolver's own error, as before."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        sock = lean.connect("localhost", port, 2.0, factory=socket.socket)
        assert isinstance(sock, socket.socket) and sock.gettimeout() == 2.0
        peer, _ = listener.accept()
        with sock, peer:
            sock.sendall(b"ping")
            assert peer.recv(4) == b"ping"
    with pytest.raises(socket.gaierror):
        lean.lookup("no-such-host.invalid", 80, 10.0)


def test_tls_connects_to_the_address_and_checks_the_name(tmp_path: Path) -> None:
    """http1's TLS connection: the name looked up, its address connected, and
    the name (not the address) sent as SNI and checked against the certificate."""
    import threading
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    names: list[object] = []

    def heard(sock: ssl.SSLObject, name: object, context: ssl.SSLContext) -> None:
        names.append(name)
    server.sni_callback = heard  # type: ignore[assignment]
    client = ssl.create_default_context(cafile=str(cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                peer, _ = listener.accept()
                try:
                    with server.wrap_socket(peer, server_side=True) as tls:
                        tls.sendall(b"hello")
                except (ssl.SSLError, OSError):
                    pass
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        conn = Connection(f"localhost:{port}", 5.0, context=client)
        conn.connect()
        assert conn.sock is not None and conn.sock.recv(5) == b"hello"
        assert conn.sock.getpeername()[:2] == ("127.0.0.1", port)
        conn.close()
        with pytest.raises(ssl.SSLCertVerificationError):       # the name is checked
            Connection(f"127.0.0.1:{port}", 5.0, context=client).connect()
        thread.join(10)
    assert names == ["localhost", None]      # SNI: the name; none for an address


@pytest.fixture
def files_only(tmp_path: Path) -> Iterator[None]:
    """An nsswitch.conf whose hosts line asks /etc/hosts alone: a name absent
    from it does not exist (EAI_NONAME), at once, without any name server."""
    if not IS_ROOT:
        pytest.skip("binds /etc/nsswitch.conf over in a private mount namespace: needs root")
    with open("/etc/hosts") as f:
        assert NAME not in f.read()
    nsswitch = tmp_path / "nsswitch.conf"
    lines = Path("/etc/nsswitch.conf").read_text().splitlines() \
        if os.path.exists("/etc/nsswitch.conf") else []
    nsswitch.write_text("".join(line + "\n" for line in lines
                                if not line.lstrip().startswith("hosts:")) + "hosts: files\n")
    made = not os.path.exists("/etc/nsswitch.conf")
    if made:
        Path("/etc/nsswitch.conf").touch()
    subprocess.run(["mount", "--bind", str(nsswitch), "/etc/nsswitch.conf"], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "/etc/nsswitch.conf"], check=True)
        if made:
            os.unlink("/etc/nsswitch.conf")


@pytest.mark.parametrize("tls", ["--tls-verify=true", "--tls-verify=false"])
def test_a_name_that_does_not_exist_is_said_so_at_once(stacko: Runner, root: Path,
                                                       files_only: None, tls: str) -> None:
    """A registry whose name does not resolve (a typo): one lookup, no retries
    with pauses (4 attempts, 3.5 s, before), and a message that says what is
    wrong."""
    before = snapshot(root)
    r = stacko("pull-image", tls, "app", f"{NAME}:5000/x:y", rc=1)
    assert f"cannot reach the registry {NAME}:5000: its host name does not resolve" in r.stderr
    assert "gave up after" not in r.stderr
    assert "check the host name" in r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(root) == before
