"""What import-image's PATH names, recognised from its content, never from its
name: an OCI layout directory, an OCI or docker archive, a rootfs tarball
(plain, gzip or zstd; '-' for stdin, unpacked as it streams in) or a plain
directory.  The formats themselves are read by ocisource.py (and dirsource.py
for a directory).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tarfile

from stacko.formats.compression import GZIP_MAGIC, ZSTD_MAGIC, PrefixedReader, decompressed
from stacko.errors import UsageError
from stacko.quoting import quote
from stacko.records import record
from stacko.formats.ocisource import (CHUNK, BadArchive, Container, DirContainer, LayerSpec,
                                      TarContainer, docker_layers, oci_layers)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable, Iterator


@record
class Source:
    kind: str                            # "oci", "docker", "rootfs" or "dir"
    layers: Callable[[str | None], list[LayerSpec]]


@contextlib.contextmanager
def open_source(path: str, staging: str, state_root: str = "") -> Iterator[Source]:
    """Recognise what PATH holds.  A rootfs tarball that comes through a pipe or
    compressed is unpacked as it streams by; an OCI or docker archive, which is
    read in any order, is spooled into staging first (uncompressed)."""
    if path != "-" and os.path.isdir(path):
        box = DirContainer(path)
        box.what = f"the layout directory {quote(path)}"
        if box.exists("index.json"):
            yield Source("oci", lambda ref: oci_layers(box, ref))
        elif box.exists("manifest.json"):
            yield Source("docker", lambda ref: docker_layers(box, ref))
        else:
            yield Source("dir", lambda ref: plain_directory(path, ref, state_root))
        return
    try:
        raw: io.BufferedIOBase = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise BadArchive(f"cannot read {quote(path)}: {e.strerror}") from None
    try:
        if path != "-" and stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            head = raw.read(4)
            raw.seek(0)
            if not head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
                with tar_source(path, path) as source:      # seekable and plain: in place
                    yield source
                return
        with decompressed(raw) as plain:
            peek = RecordingReader(plain)
            rootfs = is_rootfs_stream(peek)
            stream = PrefixedReader(bytes(peek.kept), plain)
            if rootfs:
                yield Source("rootfs", lambda ref: streamed_rootfs(path, stream, ref))
                return
            spooled = spool(path, stream, staging)
        with tar_source(spooled, path) as source:
            yield source
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def not_a_rootfs_archive(path: str) -> UsageError:
    return UsageError("--ref chooses an image of an OCI or docker archive; "
                      f"{quote(path)} is a plain rootfs tarball")


@contextlib.contextmanager
def tar_source(plain: str, path: str) -> Iterator[Source]:
    """The source of an uncompressed tar file: an archive, or a rootfs tarball."""
    try:
        tar = tarfile.open(plain, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise BadArchive(f"{quote(path)} is not a tar archive, nor a gzip or zstd compressed one "
                         f"({e})") from None
    with tar:
        try:
            box = TarContainer(tar)
        except (tarfile.TarError, EOFError) as e:
            raise BadArchive(f"{quote(path)} is a corrupt tar archive: {e}") from None
        box.what = "the archive on stdin" if path == "-" else f"the archive {quote(path)}"
        if box.exists("oci-layout") and box.exists("index.json"):
            yield Source("oci", lambda ref: oci_layers(box, ref))
        elif box.exists("manifest.json") and is_docker_manifest(box):
            yield Source("docker", lambda ref: docker_layers(box, ref))
        else:
            def rootfs(ref: str | None) -> list[LayerSpec]:
                if ref is not None:
                    raise not_a_rootfs_archive(path)
                return [LayerSpec(open_blob=lambda: open(plain, "rb"), what=path)]
            yield Source("rootfs", rootfs)


def streamed_rootfs(path: str, stream: io.BufferedIOBase, ref: str | None) -> list[LayerSpec]:
    if ref is not None:
        raise not_a_rootfs_archive(path)
    opened: list[bool] = []

    def open_once() -> io.BufferedIOBase:
        assert not opened, "a stream is read once"
        opened.append(True)
        return contextlib.nullcontext(stream)  # type: ignore[return-value]
    return [LayerSpec(open_blob=open_once, what="stdin" if path == "-" else path)]


def plain_directory(path: str, ref: str | None, state_root: str) -> list[LayerSpec]:
    if ref is not None:
        raise UsageError(f"--ref chooses an image of an OCI or docker archive; {quote(path)} is a "
                         "plain directory")
    from stacko.formats import dirsource
    return [LayerSpec(open_blob=no_blob, what=path,
                      copy_into=lambda target: dirsource.copy_tree(path, target, state_root))]


def no_blob() -> io.BufferedIOBase:
    raise AssertionError("a directory is copied, not read as a blob")


class RecordingReader:
    """Reads through, keeping a copy of everything read (a peek to be given back)."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner = inner
        self.kept = bytearray()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.kept += data
        return data


#: Names an OCI or docker archive holds at its top: a tar whose first entry is
#: one of these is spooled and looked at whole; anything else is a rootfs.
ARCHIVE_NAMES = re.compile(r"(oci-layout|index\.json|manifest\.json|repositories|blobs"
                           r"|(sha256:)?[0-9a-f]{64}(\.json|\.tar)?)(/.*)?")


PEEK_MEMBERS = 16


def is_rootfs_stream(peek: RecordingReader) -> bool:
    """Whether the tar stream is a rootfs tarball (streamed) rather than an
    archive: told from its first entries, read from a small prefix only."""
    try:
        tar = tarfile.open(fileobj=peek, mode="r|")  # type: ignore[call-overload]
        for _ in range(PEEK_MEMBERS):
            member = tar.next()
            if member is None:
                return True                          # empty: an empty layer
            name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
            if name:
                return ARCHIVE_NAMES.fullmatch(name) is None
    except (tarfile.TarError, EOFError, OSError, ValueError):
        pass               # not a tar, or a corrupt one: spool it, and say why from there
    return False


def spool(path: str, stream: io.BufferedIOBase, staging: str) -> str:
    """An uncompressed copy of the stream in staging, for an archive read in any order."""
    from stacko.formats.spacebudget import SpaceBudget
    target = os.path.join(staging, "input.tar")
    # A few KiB of gzip may decompress to more than the disk holds: stop before
    # writing what would not fit, rather than fill the root's filesystem.
    budget = SpaceBudget(staging)
    try:
        with open(target, "wb") as out:
            while True:
                data = stream.read(CHUNK)
                if not data:
                    break
                budget.take(len(data), f"{quote(path)}, decompressed,")
                out.write(data)
    except (OSError, EOFError) as e:
        raise BadArchive(f"cannot decompress {quote(path)}: {e}") from None
    return target


def is_docker_manifest(box: Container) -> bool:
    try:
        data = box.read_json("manifest.json")
    except BadArchive:
        return False
    return isinstance(data, list) and all(isinstance(e, dict) and "Layers" in e for e in data)
