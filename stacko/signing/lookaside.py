"""The lookaside: GnuPG signatures stored beside the registry.

``<base>/<repository path>@<algorithm>=<hex>/signature-N``, N from 1, each a
binary OpenPGP message (containers-signature(5), containers/image's
docker/registries_d.go and docker_image_src.go): read from ``file://`` and
``http(s)://`` until the first one missing, at most MAX_SIGNATURES of at most
MAX_SIGNATURE bytes, all within a deadline; written to a ``file://`` location
only, never over another signature.
"""
from __future__ import annotations

import os
import stat
import time

from stacko.errors import StackoError

MAX_SIGNATURES = 128
MAX_SIGNATURE = 4 << 20
DEADLINE = 60.0              # seconds for all the signatures of one manifest
REDIRECTS = 5


class LookasideError(StackoError):
    pass


def signature_url(base: str, repo_path: str, digest: str, number: int) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if not hex_part or "/" in digest or ".." in repo_path.split("/"):
        raise LookasideError(f"cannot name a signature of {repo_path}@{digest}")
    return f"{base.rstrip('/')}/{repo_path}@{algorithm}={hex_part}/signature-{number}"


def scheme_of(url: str) -> str:
    """urlsplit(url).scheme, without urllib.parse for the usual URL (its import,
    with ipaddress, is ~2 ms of a signed pull)."""
    head, colon, _ = url.partition(":")
    if colon and head[:1].isascii() and head[:1].isalpha() and \
            all(c.isascii() and (c.isalnum() or c in "+-.") for c in head):
        return head.lower()
    from urllib.parse import urlsplit
    return urlsplit(url).scheme


def _file_path(url: str) -> str:
    """The path of a file: URL, as urlsplit and unquote give it; without them
    when nothing in it is quoted, has no query, fragment, space or control
    character (which urlsplit strips)."""
    rest = url.partition(":")[2]
    if rest.startswith("//") and rest.isprintable() and not any(c in rest for c in " %?#;\\"):
        netloc, slash, path = rest[2:].partition("/")
        path = slash + path
    else:
        from urllib.parse import unquote, urlsplit
        parts = urlsplit(url)
        netloc, path = parts.netloc, unquote(parts.path)
    if netloc not in ("", "localhost"):
        raise LookasideError(f"a file:// lookaside on another host: {url}")
    return path


def read(base: str, repo_path: str, digest: str, deadline: float | None = None) -> list[bytes]:
    """Every signature of the manifest digest, in order."""
    end = time.monotonic() + (DEADLINE if deadline is None else deadline)
    scheme = scheme_of(base)
    if scheme not in ("file", "http", "https"):
        raise LookasideError(f"unsupported scheme of the lookaside {base}",
                             hint="registries.d names file://, http:// or https:// lookasides")
    found = []
    for number in range(1, MAX_SIGNATURES + 2):
        if number > MAX_SIGNATURES:
            raise LookasideError(f"the lookaside {base} has more than {MAX_SIGNATURES} "
                                 f"signatures for {repo_path}@{digest}; not reading them")
        url = signature_url(base, repo_path, digest, number)
        data = _read_file(_file_path(url)) if scheme == "file" else _read_http(url, end)
        if data is None:
            break
        found.append(data)
    return found


def _read_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise LookasideError(f"cannot read the signature {path}: {e.strerror or e}") from None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LookasideError(f"the signature {path} is not a regular file")
        data = f.read(MAX_SIGNATURE + 1)
    if len(data) > MAX_SIGNATURE:
        raise LookasideError(f"the signature {path} is larger than {MAX_SIGNATURE} bytes")
    return data


def _read_http(url: str, end: float) -> bytes | None:
    """One signature over http(s), or None when there is none (404); through
    stacko's own HTTP (stacko/registry/http1.py, bounded heads and bodies),
    every receive within the deadline end: a server that trickles a byte at a
    time cannot hold the pull."""
    from stacko.registry.http1 import Connection
    from stacko.registry.wire import Expired, Meter
    from urllib.parse import urljoin, urlsplit
    for _ in range(REDIRECTS + 1):
        parts = urlsplit(url)
        left = end - time.monotonic()
        if left <= 0:
            raise LookasideError(f"reading the signatures from the lookaside timed out at {url}")
        context = None
        if parts.scheme == "https":
            import ssl      # as http.client did: the system CAs, the host name checked
            context = ssl.create_default_context()
        conn = Connection(parts.netloc, timeout=min(left, 30.0), context=context)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "stacko"})
            conn.meter = Meter(left, min(left, 30.0))      # its deadline is end
            response = conn.getresponse()
            status = response.status
            if status == 404:
                return None
            if status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location") or ""
                new = urljoin(url, location)
                if urlsplit(new).scheme not in ("http", "https") or (
                        parts.scheme == "https" and urlsplit(new).scheme != "https"):
                    raise LookasideError(f"the lookaside redirects {url} to {new[:200]}; "
                                         "not followed")
                url = new
                continue
            if status != 200:
                raise LookasideError(f"reading the signature {url}: HTTP {status} "
                                     f"{response.reason}")
            data = response.read(MAX_SIGNATURE + 1)
            if len(data) > MAX_SIGNATURE:
                raise LookasideError(f"the signature {url} is larger than {MAX_SIGNATURE} "
                                     "bytes")
            return data
        except Expired:
            raise LookasideError(f"reading the signature {url} timed out") from None
        except (OSError, ValueError) as e:
            raise LookasideError(f"reading the signature {url}: {e}") from None
        finally:
            conn.close()
    raise LookasideError(f"the lookaside redirects {url} more than {REDIRECTS} times")


def write(base: str, repo_path: str, digest: str, blob: bytes) -> str:
    """Store blob as the next signature of digest (or find it already there);
    returns its URL.  Durable before it returns."""
    try:
        return _write(base, repo_path, digest, blob)
    except OSError as e:
        raise LookasideError(f"cannot write the signature to the lookaside {base}: "
                             f"{e.strerror or e}") from None


def _write(base: str, repo_path: str, digest: str, blob: bytes) -> str:
    if scheme_of(base) != "file":
        raise LookasideError(f"stacko writes signatures only to a file:// lookaside, not {base}",
                             hint="set lookaside-staging in registries.d to a file:// URL "
                                  "and publish that directory")
    for number in range(1, MAX_SIGNATURES + 1):
        url = signature_url(base, repo_path, digest, number)
        path = _file_path(url)
        existing = _read_file(path)
        if existing == blob:
            return url
        if existing is not None:
            continue
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        temp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            with open(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temp, path)        # never over a signature written meanwhile
            except FileExistsError:
                continue
            finally:
                os.unlink(temp)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return url
    raise LookasideError(f"the lookaside already holds {MAX_SIGNATURES} signatures of "
                         f"{repo_path}@{digest}")
