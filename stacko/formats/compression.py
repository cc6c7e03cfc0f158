"""Compressing and decompressing layer blobs: gzip through ISA-L, zstd through libzstd.

Both libraries come from PyPI as hard dependencies (``isal``, ``zstandard``),
with no fallback to the standard library: measured on a 179 MB rootfs tar
(docs/startup.md), ISA-L compresses with a ninth of zlib's CPU time and
inflates 2.6 times as fast, and libzstd in-process saves starting the
``zstd`` command and pumping every byte through a pipe.  A fallback would make
the same image export to different bytes, and so different digests, on
machines with and without the library.

Output is deterministic: the same data gives the same bytes every time on one
machine.  ISA-L and libzstd pick code paths by CPU, so two machines with
different CPUs (or library versions) may compress the same layer to different,
equally valid, bytes; the layer's diff_id, the digest of the uncompressed tar,
is the same everywhere.

Both libraries are imported inside the functions that use them: only export,
import and push pay for them, never a listing or a mount.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Iterator

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# ISA-L's levels run 0-3.  Level 3 writes output within 3 % of the size of
# `podman save`'s gzip (Go, level 6 equivalent) with a third of its CPU time;
# level 2 saves another third of the time for 1.4 % more bytes.
GZIP_LEVEL = 3
ZSTD_LEVEL = 3            # the zstd command's default
CHUNK = 1 << 20


# --- compressing --------------------------------------------------------------------
class ParallelGzip:
    """A gzip writer that deflates 1 MiB blocks on all CPUs, as pigz does.

    ISA-L lets go of the GIL while it compresses, so threads scale.  Each block
    is deflated on its own, primed with the 32 KiB before it and ended with a
    sync flush; the blocks join into one ordinary gzip member.  The output
    depends only on the data, never on timing or the number of threads.
    """

    BLOCK = 1 << 20
    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"   # no name, no time, OS unknown

    def __init__(self, out: io.BufferedIOBase, level: int = GZIP_LEVEL) -> None:
        from isal import isal_zlib

        from stacko.parallel import Task    # not concurrent.futures: it imports logging

        self.zlib, self.task = isal_zlib, Task
        self.out, self.level = out, level
        self.workers = max(1, os.cpu_count() or 1)
        self.pending: collections.deque = collections.deque()    # blocks being deflated
        self.buffer = bytearray()
        self.previous = b""
        self.crc = 0
        self.size = 0
        self.out.write(self.HEADER)

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) > self.BLOCK:
            self._submit(bytes(self.buffer[:self.BLOCK]), last=False)
            del self.buffer[:self.BLOCK]
        return len(data)

    def _submit(self, block: bytes, last: bool) -> None:
        self.crc = self.zlib.crc32(block, self.crc)
        self.size += len(block)
        # A thread a block (a MiB: starting one costs a few hundredths of its work),
        # at most twice as many at once as there are CPUs.
        self.pending.append(self.task(self._deflate, block, self.previous, last))
        self.previous = block[-32768:]
        while len(self.pending) > 2 * self.workers or \
                (self.pending and self.pending[0].done()):
            self.out.write(self.pending.popleft().result())

    def _deflate(self, block: bytes, primer: bytes, last: bool) -> bytes:
        z = self.zlib
        c = z.compressobj(self.level, z.DEFLATED, -z.MAX_WBITS, 9, z.Z_DEFAULT_STRATEGY,
                          *((primer,) if primer else ()))
        return c.compress(block) + c.flush(z.Z_FINISH if last else z.Z_SYNC_FLUSH)

    def finish(self) -> None:
        """Deflate what is left and write the gzip trailer."""
        self._submit(bytes(self.buffer), last=True)
        while self.pending:
            self.out.write(self.pending.popleft().result())
        self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))

    def flush(self) -> None:
        pass

    def __enter__(self) -> ParallelGzip:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.pending:             # nothing left deflating into a closed file
            self.pending.popleft().wait()


class ZstdWriter:
    """A zstd writer on all CPUs.  libzstd's multi-threaded mode gives the same
    bytes whatever the number of threads (one or more) and however the data is
    cut into writes, so the output depends only on the data.  The frame carries
    a checksum of its content, as the zstd command writes by default, so that
    a reader can tell damage that still decodes."""

    def __init__(self, out: io.BufferedIOBase, level: int = ZSTD_LEVEL) -> None:
        import zstandard

        self.frame_end = zstandard.FLUSH_FRAME
        compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        self.writer = compressor.stream_writer(out, closefd=False)

    def write(self, data: bytes) -> int:
        self.writer.write(data)
        return len(data)

    def finish(self) -> None:
        self.writer.flush(self.frame_end)

    def flush(self) -> None:
        pass

    def __enter__(self) -> ZstdWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


class Plain:
    """No compression: writes straight through."""

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.write = out.write

    def finish(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def compressor(out: io.BufferedIOBase, compression: str) -> ParallelGzip | ZstdWriter | Plain:
    """A writer that compresses into out ("gzip", "zstd" or "none").  Use it as a
    context manager and call finish() once everything is written."""
    if compression == "gzip":
        return ParallelGzip(out)
    if compression == "zstd":
        return ZstdWriter(out)
    if compression == "none":
        return Plain(out)
    raise ValueError(f"unknown compression {compression!r}")


# --- decompressing ----------------------------------------------------------------------
class PrefixedReader:
    """Gives back the bytes already peeked at, then the rest of the stream."""

    def __init__(self, prefix: bytes, inner: io.BufferedIOBase) -> None:
        self.prefix, self.inner = prefix, inner

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n is None or n < 0:
                data, self.prefix = self.prefix + self.inner.read(), b""
            else:
                data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        return self.inner.read(n)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """ISA-L's gzip reader reads this way."""
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class ZstdFrames:
    """Passes a zstd stream through while following its frames (RFC 8878, 3.1),
    so that a stream cut short is an error: zstandard's stream reader takes
    the end of its input for the end of the data, even inside a frame."""

    FRAME_MAGIC = 0xFD2FB528
    SKIPPABLE = 0x184D2A50      # the top 28 bits of a skippable frame's magic

    def __init__(self, inner: PrefixedReader) -> None:
        self.inner = inner
        self.state, self.want, self.head = "magic", 4, b""
        self.skip = 0            # bytes of a block or skippable frame still to pass
        self.checksum = False

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        if not data:
            if self.state != "magic" or self.head or self.skip:
                raise EOFError("zstd data ends inside a frame: the stream is truncated")
            return data
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            take = min(self.want - len(self.head), end - pos)
            self.head += data[pos:pos + take]
            pos += take
            if len(self.head) == self.want:
                head, self.head = self.head, b""
                self._parsed(head)
        return data

    def _parsed(self, head: bytes) -> None:
        state = self.state
        if state == "magic":
            magic = int.from_bytes(head, "little")
            if magic == self.FRAME_MAGIC:
                self.state, self.want = "descriptor", 1
            elif magic & 0xFFFFFFF0 == self.SKIPPABLE:
                self.state, self.want = "skippable", 4
            else:
                raise OSError("corrupt zstd data: something other than a frame follows a frame")
        elif state == "skippable":
            self.skip = int.from_bytes(head, "little")
            self.state, self.want = "magic", 4
        elif state == "descriptor":
            d = head[0]
            single = bool(d & 0x20)
            self.checksum = bool(d & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] \
                + ((1 if single else 0), 2, 4, 8)[d >> 6]
            self.state, self.want = ("header", rest) if rest else ("block", 3)
        elif state == "header":
            self.state, self.want = "block", 3
        elif state == "block":
            value = int.from_bytes(head, "little")
            kind = (value >> 1) & 3
            if kind == 3:
                raise OSError("corrupt zstd data: a block of the reserved type")
            self.skip = 1 if kind == 1 else value >> 3       # an RLE block holds one byte
            if value & 1:                                     # the frame's last block
                self.state, self.want = ("checksum", 4) if self.checksum else ("magic", 4)
        else:                                                 # the checksum
            self.state, self.want = "magic", 4


class CheckedReader:
    """Reads from a decompressor, turning its own error types into OSError,
    which the callers report as a corrupt archive or layer."""

    def __init__(self, inner: io.BufferedIOBase, errors: tuple[type[BaseException], ...],
                 what: str) -> None:
        self.inner, self.errors, self.what = inner, errors, what

    def read(self, n: int = -1) -> bytes:
        try:
            return self.inner.read(n)
        except self.errors as e:
            raise OSError(f"corrupt {self.what} data: {e}") from None


GZIP_READ = 512 << 10       # what isal's GzipFile reads its input by


def gzip_reader(stream: PrefixedReader) -> io.BufferedReader:
    """The gzip members of stream, inflated.  isal.igzip.GzipFile's reader in
    read mode is isal_zlib's _GzipReader (C: the gzip header and trailer, CRC
    and size checks, several members, zero padding) in an io.BufferedReader;
    it is built here as GzipFile builds it, because igzip imports gzip and
    typing (~3-4 ms of a pull).  tests/test_compression.py holds the two to the
    same output and errors; an isal without _GzipReader gets GzipFile."""
    from isal import isal_zlib
    reader = getattr(isal_zlib, "_GzipReader", None)
    if reader is None:
        from isal import igzip
        return igzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value,arg-type]
    return io.BufferedReader(reader(stream, GZIP_READ))


@contextlib.contextmanager
def decompressed(raw: io.BufferedIOBase) -> Iterator[io.BufferedIOBase]:
    """The uncompressed stream of raw: gzip and zstd are told by their magic.
    Corrupt data raises OSError, data cut short EOFError."""
    head = raw.read(4)
    stream = PrefixedReader(head, raw)
    if head.startswith(GZIP_MAGIC):
        from isal import isal_zlib

        with gzip_reader(stream) as plain:
            yield CheckedReader(plain, (isal_zlib.error,), "gzip")  # type: ignore[misc]
    elif head.startswith(ZSTD_MAGIC):
        import zstandard

        frames = ZstdFrames(stream)
        with zstandard.ZstdDecompressor().stream_reader(
                frames, read_size=CHUNK, read_across_frames=True, closefd=False) as plain:
            yield CheckedReader(plain, (zstandard.ZstdError,), "zstd")  # type: ignore[misc]
    else:
        yield stream  # type: ignore[misc]
