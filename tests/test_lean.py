"""What stacko does without costly standard modules, for start-up's sake
(docs/startup.md), does what those modules do: the checks written with str
methods accept exactly what the regular expressions they replace accept, and
the stand-ins of stacko/lean.py behave as json, signal, functools and ctypes."""
from __future__ import annotations

import errno
import os
import re

import pytest
from hypothesis import given, settings, strategies as st

from stacko import mounttable, overlay, validate
from stacko.names import is_name, is_utc_time

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
LAYER_RE = re.compile(r"[a-z0-9]{5}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
UTC_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
OCTAL_RE = re.compile(r"\\([0-7]{3})")

# Characters near the edges of every rule, and some far from them.
EDGY = st.lists(st.sampled_from(list("aZz09._+-/ \\\n\t:TZ,sha256é٣²\x00")
                                + ["\\054", "\\134", "\\12", "\\8"]),
                max_size=140).map("".join)


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_names(text: str) -> None:
    assert is_name(text) == bool(NAME_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["a", "A" * 128, "A" * 129, "", "-a", ".a", "a b", "é",
                                  "a\n", "0+_.-"])
def test_names_at_the_edges(text: str) -> None:
    assert is_name(text) == bool(NAME_RE.fullmatch(text))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="abz09AZ-", min_size=4, max_size=6))
def test_layers(text: str) -> None:
    assert validate.is_layer(text) == bool(LAYER_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["sha256:" + "0" * 64, "sha256:" + "f" * 64,
                                  "sha256:" + "F" * 64, "sha256:" + "0" * 63,
                                  "sha256:" + "0" * 65, "sha512:" + "0" * 64,
                                  "sha256:" + "0" * 63 + "\n", "sha256:" + "٣" * 64])
def test_digests(text: str) -> None:
    assert validate.is_digest(text) == bool(DIGEST_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["2026-11-25T20:22:05Z", "2026-11-25T20:22:05+00:00",
                                  "2026-11-25 20:22:05Z", "2026-11-25T20:22:0Z",
                                  "٢٠٢٦-11-25T20:22:05Z", "2026-11-25T20:22:05z",
                                  "²026-11-25T20:22:05Z", "", "2026-11-25T20:22:05Z\n"])
def test_utc_times(text: str) -> None:
    assert is_utc_time(text) == bool(UTC_TIME_RE.fullmatch(text))


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_mountinfo_fields(text: str) -> None:
    assert mounttable.decode_mountinfo_field(text) == \
        OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_option_unescaping(text: str) -> None:
    assert mounttable.unescape_option(text) == re.sub(r"\\(.)", r"\1", text)
    assert mounttable.unescape_option(overlay.escape_option(text)) == text


# --- records: named tuples without collections -----------------------------------
def test_records_behave_as_named_tuples() -> None:
    import collections
    import pickle

    from stacko.records import Instance, replace

    Twin = collections.namedtuple("Instance", ["image", "layer", "created"], defaults=[""])
    for args, kwargs in [(("a", "b"), {}), (("a", "b", "c"), {}), ((), {"layer": "b", "image": "a"}),
                         (("a",), {"layer": "b", "created": "c"})]:
        ours, theirs = Instance(*args, **kwargs), Twin(*args, **kwargs)
        assert tuple(ours) == tuple(theirs) and repr(ours) == repr(theirs)
        assert (ours.image, ours.layer, ours.created) == (theirs.image, theirs.layer, theirs.created)
        assert pickle.loads(pickle.dumps(ours)) == ours
    assert replace(Instance("a", "b"), created="t") == Instance("a", "b", "t")
    assert Instance._fields == Twin._fields and Instance("a", "b")._asdict() == Twin("a", "b")._asdict()
    for args, kwargs in [(("a",), {}), (("a", "b", "c", "d"), {}), (("a", "b"), {"image": "x"}),
                         (("a", "b"), {"size": 1})]:
        with pytest.raises(TypeError):
            Instance(*args, **kwargs)
        with pytest.raises(TypeError):
            Twin(*args, **kwargs)
    with pytest.raises(ValueError):
        replace(Instance("a", "b"), size=1)
    with pytest.raises(AttributeError):
        Instance("a", "b").image = "c"         # immutable


# --- lean.py: the stand-ins for json, signal, functools and ctypes ------------------
# (lean.parse_json against json.loads: tests/test_state.py, on generated documents.)
def test_the_signal_stand_in_is_signals_core() -> None:
    import signal

    from stacko.lean import signal as lean_signal
    assert lean_signal.SIGTERM == signal.SIGTERM and lean_signal.SIG_DFL == signal.SIG_DFL

    def handler(signum: int, frame: object) -> None:
        pass
    previous = lean_signal.signal(lean_signal.SIGUSR1, handler)
    try:
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_wraps_is_update_wrapper() -> None:
    import functools

    from stacko.lean import wraps

    def func(a: int) -> int:
        """the doc"""
        return a
    func.extra = 1  # type: ignore[attr-defined]
    ours, theirs = wraps(lambda: 0, func), functools.update_wrapper(lambda: 0, func)
    for attr in ("__module__", "__name__", "__qualname__", "__doc__", "__wrapped__", "extra"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_libc_is_ctypes_own() -> None:
    """lean.libc binds the C library through _ctypes: its types and functions
    must be the ones ctypes would have passed."""
    import ctypes

    from stacko.lean import libc
    c = libc()
    assert libc() is c
    for ours, theirs in ((c.c_long, ctypes.c_long), (c.c_int, ctypes.c_int),
                         (c.c_uint, ctypes.c_uint), (c.c_ulong, ctypes.c_ulong),
                         (c.c_char_p, ctypes.c_char_p)):
        assert ours._type_ == theirs._type_ and ctypes.sizeof(ours) == ctypes.sizeof(theirs)
    assert c.c_int(-100).value == -100 and c.c_uint(0x200).value == 0x200
    assert c.c_char_p(None).value is None
    lib = ctypes.CDLL(None, use_errno=True)
    getpid = c.function("getpid", c.c_int)
    assert getpid._flags_ == lib.getpid._flags_ and getpid() == os.getpid()
    assert ctypes.sizeof(c.function("syscall", c.c_long)._restype_) == ctypes.sizeof(ctypes.c_long)
    close = c.function("close", c.c_int)
    assert close(c.c_int(-1)) == -1 and c.get_errno() == errno.EBADF
    with pytest.raises(AttributeError):
        c.function("no_such_function_in_libc", c.c_int)


@pytest.mark.parametrize("data", [b"", b"abc", bytes(range(256)) * 300])
def test_sha256_is_hashlibs(data: bytes) -> None:
    import hashlib
    from stacko.lean import sha256
    ours = sha256(data)
    assert ours.hexdigest() == hashlib.sha256(data).hexdigest()    # type: ignore[attr-defined]
    ours.update(b"more")                                             # type: ignore[attr-defined]
    assert ours.hexdigest() == hashlib.sha256(data + b"more").hexdigest()  # type: ignore[attr-defined]


def test_only_lean_names_a_private_module() -> None:
    """CPython's private modules (_json, _signal, _ctypes, _collections_abc …)
    are named by lean.py alone: everywhere else, the standard module."""
    import ast
    from pathlib import Path
    top = Path(__file__).resolve().parent.parent / "stacko"
    for path in sorted(top.rglob("*.py")):
        if path.name == "lean.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            private = [n for n in names if n.startswith("_") and n != "__future__"]
            assert not private, f"{path.name}:{node.lineno}: {private}"


# --- lean.connect: socket.create_connection without the socket module --------------
def test_connect_is_create_connections() -> None:
    import socket

    from stacko.lean import SocketTimeout, connect
    assert SocketTimeout is socket.timeout
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for ours in (True, False):
            sock = connect(b"127.0.0.1", port, 2.5, no_delay=True) if ours else \
                socket.create_connection(("127.0.0.1", port), 2.5)
            peer, _ = listener.accept()
            try:
                assert sock.gettimeout() == 2.5                          # type: ignore[attr-defined]
                sock.sendall(b"ping")                                    # type: ignore[attr-defined]
                assert peer.recv(4) == b"ping"
                peer.sendall(b"pong")
                assert sock.recv(4) == b"pong"                           # type: ignore[attr-defined]
                if ours:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # type: ignore[attr-defined]
                    sock.settimeout(0.2)                                  # type: ignore[attr-defined]
                    with pytest.raises(SocketTimeout):
                        sock.recv(1)                                      # type: ignore[attr-defined]
            finally:
                sock.close()                                              # type: ignore[attr-defined]
                peer.close()
    for make in (lambda: connect("127.0.0.1", port, 2.5),
                 lambda: socket.create_connection(("127.0.0.1", port), 2.5)):
        with pytest.raises(ConnectionRefusedError):          # the port is closed now
            make()
    for make in (lambda: connect("no-such-host.invalid", 80, 2.5),
                 lambda: socket.create_connection(("no-such-host.invalid", 80), 2.5)):
        with pytest.raises(socket.gaierror):
            make()


# --- a bearer token, checked with str methods (auth.token_from) ----------------------
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,65536}")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ09!~ \t\r\n\x00\x7f\x80é\u2028-._")), max_size=20))
def test_tokens(text: str) -> None:
    import json

    from stacko.registry.auth import RegistryError, token_from
    try:
        token_from(json.dumps({"token": text}).encode(), "the token service")
        taken = True
    except RegistryError:
        taken = False
    assert taken == bool(TOKEN_RE.fullmatch(text))
    assert not taken or len(text) <= 65536


# registry/ref.py's checks of a REF, without re (update-stackpoint's look).
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                     r"(?::[0-9]{1,5})?")
REF_EDGY = st.lists(st.sampled_from(list("aZz09._-/:[]@ é٣\n") + ["__", "--", "fF", "::1"]),
                    max_size=40).map("".join)


@settings(max_examples=3000, deadline=None)
@given(REF_EDGY)
def test_reference_parts(text: str) -> None:
    from stacko.registry import ref
    assert ref.is_repository(text) == bool(REPO_RE.fullmatch(text)), text
    assert ref.is_tag(text) == bool(TAG_RE.fullmatch(text)), text
    assert ref.is_host(text) == bool(HOST_RE.fullmatch(text)), text


@pytest.mark.parametrize("text", ["a", "a.b", "a__b", "a___b", "a---b", "a-.b", "a/b/c", "a//b",
                                  "/a", "a/", "A", "_a", "a_", "x" * 128, "x" * 129, "[::1]",
                                  "[::1]:5000", "[]", "[::1]x", "h:", "h:123456", "h:65535",
                                  "a.-b", "a-b.c-d:0", "[fe80::1%25eth0]", "h:٣", "-h", "h-"])
def test_reference_parts_at_the_edges(text: str) -> None:
    from stacko.registry import ref
    assert ref.is_repository(text) == bool(REPO_RE.fullmatch(text)), text
    assert ref.is_tag(text) == bool(TAG_RE.fullmatch(text)), text
    assert ref.is_host(text) == bool(HOST_RE.fullmatch(text)), text


# lean.dump_json: the state files' writer, held to json.dumps(indent=2, sort_keys=True).
JSON_TEXT = st.text(alphabet=st.sampled_from(list('az"\\/\n\t\x00\x1f\x7f é€😀') + ["\ud800"]),
                    max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) | JSON_TEXT
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(JSON_TEXT, children,
                                                                        max_size=4)
    | st.tuples(children, children) | st.dictionaries(st.integers(0, 3), children, max_size=2),
    max_leaves=25)


@settings(max_examples=2000, deadline=None)
@given(JSON_VALUES)
def test_dump_json_writes_what_json_dumps_writes(value: object) -> None:
    import json

    from stacko.lean import dump_json
    assert dump_json(value) == json.dumps(value, indent=2, sort_keys=True)
    # compact, as image configs and manifests are written (ocimanifest.json_bytes)
    assert dump_json(value, compact=True) == json.dumps(value, sort_keys=True,
                                                        separators=(",", ":"))


def test_a_state_write_imports_no_json(tmp_path) -> None:
    """update-stackpoint's no-op check writes stackpoints.json: lean.dump_json
    does it without json, re or enum (docs/bench.md)."""
    import subprocess
    import sys
    code = ("import sys; from stacko.state import Store; s = Store(sys.argv[1])\n"
            "with s.locked(exclusive=True): s.save_stackpoints({})\n"
            "print(' '.join(sorted(sys.modules)))")
    from pathlib import Path
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    modules = subprocess.run([sys.executable, "-c", code, str(tmp_path / "root")], env=env,
                             check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    assert (tmp_path / "root" / "stackpoints.json").read_text().startswith('{\n  "stackpoints"')
    assert {"json", "re", "enum"} & set(modules) == set()
