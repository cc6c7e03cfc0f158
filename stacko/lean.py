"""Stand-ins for six standard modules, for the sake of start-up.

Why: the commands run most often (get-stackpoint-dir, mount-stackpoint,
list-images …) do a millisecond or two of work, and importing ``json`` (with
``re`` and ``enum``), ``signal`` (with ``enum``), ``ctypes`` or ``functools``
(with ``collections``) would cost each of them more than that; the measured
figures are in docs/startup.md.  So each stand-in below does what its public
equivalent does, on the C module that equivalent is itself built on (``_json``,
``_signal``, ``_ctypes``), which the interpreter has loaded already or loads
for almost nothing.  This is the only module of stacko that names a private
module of CPython, and tests/test_lean.py holds each stand-in to its public
equivalent: ``parse_json`` to ``json.loads``, ``dump_json`` to ``json.dumps``
(as state files and image documents are written), ``signal`` to ``signal``,
``wraps`` to ``functools.update_wrapper``, ``libc()`` to ``ctypes``, ``sha256``
to ``hashlib.sha256``, ``connect`` to ``socket.create_connection`` (but for
its host's lookup, which ``lookup`` bounds in time, as create_connection
does not).
"""
from __future__ import annotations

try:   # the C module behind signal, loaded at every start
    import _signal as signal
except ImportError:             # an interpreter without it
    import signal               # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable
    from typing import Any

    Function = Callable[..., object]

__all__ = ["signal", "parse_json", "dump_json", "wraps", "libc", "sha256", "connect", "lookup", "SocketTimeout",
           "allocate_lock", "get_ident"]


# --- json.loads ---------------------------------------------------------------
class _JsonContext:
    """What the json module's C scanner reads its settings from: json.loads's."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name)          # NaN, Infinity, -Infinity, as json.loads


def parse_json(text: str) -> object:
    """json.loads(text), without importing json when text is well-formed: the C
    scanner of _json is what json.loads itself uses.  Anything the scanner does
    not take whole, json.loads parses again, to raise its own error."""
    try:
        from _json import make_scanner
    except ImportError:                   # an interpreter without it
        pass
    else:
        start = len(text) - len(text.lstrip(" \t\n\r"))
        try:
            # typeshed calls the argument a make_scanner; it is any object
            # with json.decoder.JSONDecoder's attributes.
            value, end = make_scanner(_JsonContext)(text, start)  # type: ignore[arg-type]
        except Exception:   # noqa: BLE001  json.loads, below, says what is wrong
            # Any: the scanner raises StopIteration, JSONDecodeError, or (when
            # json.decoder, where its error class lives, is not loaded) a
            # SystemError; its error paths are for json.loads, not for us.
            pass
        else:
            if not text[end:].strip(" \t\n\r"):
                return value
    import json
    return json.loads(text)


# --- json.dumps(sort_keys=True), indented or compact ------------------------------
def dump_json(value: object, compact: bool = False) -> str:
    """json.dumps(value, indent=2, sort_keys=True), as the state files are
    written, or with compact=True json.dumps(value, sort_keys=True,
    separators=(",", ":")), as image configs and manifests are, without
    importing json (with re and enum) for what they hold: objects with string
    keys, lists, strings, integers, booleans and null.  Strings go through
    _json's encode_basestring_ascii, as json.dumps's do; anything else (a
    float, another key type) goes to json.dumps itself."""
    parts: list[str] = []
    try:
        from _json import encode_basestring_ascii as quote
    except ImportError:                   # an interpreter without it
        pass
    else:
        if _dump(value, quote, parts, None if compact else "\n"):
            return "".join(parts)
    import json
    if compact:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return json.dumps(value, indent=2, sort_keys=True)


def _dump(value: object, quote: Callable[[str], str], out: list[str],
          newline: str | None) -> bool:
    """Appends value's text to out, as json's encoders write it (newline: the
    line break and indent before a closing bracket; None: compact); False for
    what it leaves to json."""
    if isinstance(value, str):
        out.append(quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif type(value) is int:
        out.append(int.__repr__(value))
    elif isinstance(value, (dict, list, tuple)):
        if not value:
            out.append("{}" if isinstance(value, dict) else "[]")
            return True
        inner: str | None = None
        if newline is None:
            first, comma, colon, end = "", ",", ":", ""
        else:
            inner = newline + "  "
            first, comma, colon, end = inner, "," + inner, ": ", newline
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                return False
            out.append("{")
            for n, key in enumerate(sorted(value)):
                out.append(comma if n else first)
                out.append(quote(key))
                out.append(colon)
                if not _dump(value[key], quote, out, inner):
                    return False
            out.append(end + "}")
        else:
            out.append("[")
            for n, item in enumerate(value):
                out.append(comma if n else first)
                if not _dump(item, quote, out, inner):
                    return False
            out.append(end + "]")
    else:
        return False
    return True


# --- hashlib.sha256 ---------------------------------------------------------------
def sha256(data: bytes = b"") -> object:
    """hashlib.sha256 for a small document (an image config, a manifest),
    without hashlib, which loads OpenSSL's libcrypto (~3 ms): CPython's own
    sha256, the module hashlib falls back on (_sha2 since 3.12, _sha256
    before).  Large data goes through hashlib, whose OpenSSL is faster."""
    try:
        from _sha2 import sha256 as made
    except ImportError:
        try:
            from _sha256 import sha256 as made  # type: ignore[no-redef]
        except ImportError:          # an interpreter built without it
            from hashlib import sha256 as made  # type: ignore[no-redef]
    return made(data)


# --- threading.get_ident and threading.Lock --------------------------------------------
# _thread is threading's own core (documented, but its name is private):
# threading costs the registry client ~0.9 ms of imports for one lock and a
# per-thread connection pool.
try:
    from _thread import allocate_lock, get_ident
except ImportError:             # an interpreter without it
    from threading import Lock as allocate_lock, get_ident  # type: ignore[assignment]


# --- socket.create_connection ---------------------------------------------------------
# Both import _socket when first asked for, not with this module: every command
# imports lean.py, and loading _socket costs a start ~0.4 ms.
def _socket_module() -> object:
    try:   # the C module behind socket
        import _socket
    except ImportError:             # an interpreter without it
        import socket as _socket    # type: ignore[no-redef]
    return _socket


def __getattr__(name: str) -> type[OSError]:
    """lean.SocketTimeout: socket.timeout (TimeoutError since 3.10), made when
    first asked for."""
    if name == "SocketTimeout":
        return _socket_module().timeout  # type: ignore[attr-defined,no-any-return]
    raise AttributeError(f"module 'stacko.lean' has no attribute {name!r}")


def lookup(host: str | bytes, port: int, timeout: float | None) -> list[tuple]:
    """_socket.getaddrinfo(host, port, 0, SOCK_STREAM), given at most timeout
    seconds: the C library's resolver has no bound of ours (glibc's waits
    timeout x attempts x name servers of resolv.conf, an NSS module as long as
    it likes), so a name is looked up on a thread of its own, waited for that
    long, and left behind when it is late (it ends with the process).  A
    numeric address (127.0.0.1, ::1) needs no lookup, nor a thread: it is
    parsed first, as AI_NUMERICHOST.  LookupTimeout (a StackoError) when the
    time is up."""
    _socket: Any = _socket_module()
    try:
        return _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM, 0,  # type: ignore[no-any-return]
                                   _socket.AI_NUMERICHOST)
    except _socket.gaierror as e:
        if e.errno != _socket.EAI_NONAME:   # a name (or nothing getaddrinfo takes)
            raise
    try:
        from _thread import start_new_thread
    except ImportError:                 # an interpreter without threads
        return _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)  # type: ignore[no-any-return]
    answer: list[object] = []
    done = allocate_lock()
    done.acquire()

    def look() -> None:
        try:
            answer.append(_socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM))
        except BaseException as e:      # noqa: BLE001  raised again by the waiting thread
            answer.append(e)
        finally:
            done.release()

    start_new_thread(look, ())
    if not done.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
        from stacko.errors import LookupTimeout
        from stacko.quoting import quote
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
        raise LookupTimeout(f"looking up the address of {quote(name)} did not finish "
                            f"within {timeout:g} s",
                            hint="check the host name, and the name servers of "
                                 "/etc/resolv.conf: one that does not answer holds every "
                                 "lookup")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]  # type: ignore[return-value]


def connect(host: str | bytes, port: int, timeout: float, no_delay: bool = False,
            within: float | None = None, factory: Callable[..., object] | None = None) -> object:
    """socket.create_connection((host, port), timeout), on _socket, the C module
    the socket module wraps: socket's own import (its enums, selectors) costs
    a look at a registry ~3 ms.  The socket returned is _socket's: recv,
    sendall, settimeout, setsockopt, fileno and close as socket's, but not a
    context manager; factory (socket.socket, for ssl) makes another kind.
    no_delay: TCP_NODELAY set before connecting.  Unlike create_connection's,
    the host's lookup is bounded too: within seconds (timeout when None), see
    lookup()."""
    _socket: Any = _socket_module()
    make: Any = factory if factory is not None else _socket.socket
    failures: list[OSError] = []
    for family, kind, proto, _, address in lookup(host, port,
                                                  timeout if within is None else within):
        sock = None
        try:
            sock = make(family, kind, proto)
            sock.settimeout(timeout)
            if no_delay:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.connect(address)
            return sock
        except OSError as e:
            failures.append(e)
            if sock is not None:
                sock.close()
    if failures:
        raise failures[0]
    raise OSError("getaddrinfo returns an empty list")


# --- functools.update_wrapper ---------------------------------------------------
def wraps(wrapper: Function, func: Function) -> Function:
    """functools.update_wrapper(wrapper, func)."""
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attr, getattr(func, attr))
    wrapper.__dict__.update(func.__dict__)
    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


# --- ctypes -----------------------------------------------------------------------
class CLibrary:
    """The C library the process is linked with, as ``ctypes.CDLL(None,
    use_errno=True)``, with the C types its calls need, as ctypes defines
    ``c_int`` and the rest: built on _ctypes when first asked for (see libc)."""

    def __init__(self) -> None:
        import _ctypes

        class c_long(_ctypes._SimpleCData):     # noqa: N801  ctypes' names
            _type_ = "l"

        class c_int(_ctypes._SimpleCData):      # noqa: N801
            _type_ = "i"

        class c_uint(_ctypes._SimpleCData):     # noqa: N801
            _type_ = "I"

        class c_ulong(_ctypes._SimpleCData):    # noqa: N801
            _type_ = "L"

        class c_char_p(_ctypes._SimpleCData):   # noqa: N801  (None: NULL)
            _type_ = "z"

        self.c_long, self.c_int, self.c_uint, self.c_ulong, self.c_char_p = \
            c_long, c_int, c_uint, c_ulong, c_char_p
        self._core = _ctypes
        # What a function pointer asks of its library: the handle.  dlopen(NULL)
        # is the program itself, with its C library, as CDLL(None).
        self._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]

    def function(self, name: str, restype: type) -> Callable[..., int]:
        """The C function name, as ``CDLL(None, use_errno=True).name`` with that
        restype (an integer type); AttributeError when the library has none."""
        core = self._core

        class Function(core.CFuncPtr):   # type: ignore[name-defined,misc]
            _flags_ = core.FUNCFLAG_CDECL | core.FUNCFLAG_USE_ERRNO
            _restype_ = restype
        return Function((name, self))    # type: ignore[no-any-return]

    def get_errno(self) -> int:
        """errno as the last call of a function above left it (ctypes.get_errno)."""
        return self._core.get_errno()    # type: ignore[no-any-return]


_libc: list[CLibrary] = []


def libc() -> CLibrary:
    """The one CLibrary of the process, made on first use: only the commands
    that mount, sync or run a check pay for _ctypes."""
    if not _libc:
        _libc.append(CLibrary())
    return _libc[0]
