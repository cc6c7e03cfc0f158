"""A lean reader of layer tars, for unpacking: the ustar header, GNU long
names, links and sparse files, and PAX records (path, linkpath, size, mtime,
uid, gid, SCHILY.xattr.*, GNU sparse 0.0, 0.1 and 1.0), global ones included.

Not ``tarfile``: its header parsing and the readers it stacks were a third of
an import's CPU time (docs/bench.md).  This reads the stream in large chunks
and hands a member's data to the caller as views of them, without copies.

It trusts nothing: every header's checksum is checked (unsigned, or signed as
some old tars wrote it), every number must be octal digits or base-256 and
within bounds, extended headers (PAX, long names, sparse maps) are at most
``EXT_LIMIT`` bytes and at most ``MAX_EXT`` may precede a member, PAX records
must be framed exactly, a NUL in a PAX name is refused, data that ends inside a
member is an error, and what follows the end of the archive must be a bounded
run of zeros (``tarend``).
"""
from __future__ import annotations

import os
import struct

from stacko.formats.tarend import tail_problem
from stacko.formats.tarfields import (BadLayer, as_text, check_sum, checked_id, decimal, field,
                                       number, parse_pax, pax_time_ns, size_of)
from stacko.quoting import quote

CHUNK = 1 << 20
BLOCK = 512
EXT_LIMIT = 1 << 20          # a PAX header, a long name or a sparse map
MAX_EXT = 8                  # extended headers before one member
MAX_SPARSE = 1 << 18         # data runs of one sparse file
ZERO_BLOCK = bytes(BLOCK)
MAX_TIME_NS = ((1 << 63) - 1) * 10**9    # a time_t of seconds, as utimensat(2) takes it

REG, LNK, SYM, CHR, BLK, DIR, FIFO = (b"0", b"1", b"2", b"3", b"4", b"5", b"6")
# Regular files: '0', the old '\0', '7' (contiguous); 'S' is GNU's old sparse file.
_KIND = {b"0": REG, b"\0": REG, b"7": REG, b"S": REG, b"1": LNK, b"2": SYM, b"3": CHR,
         b"4": BLK, b"5": DIR, b"6": FIFO}
_EXTENDED = (b"x", b"X", b"g", b"L", b"K")      # X: Solaris's name for x
_OCTALS = struct.Struct("100x8s8s8s12s12s")       # mode, uid, gid, size, mtime
_NUMBERS = ((100, 108, "mode"), (108, 116, "uid"), (116, 124, "gid"), (124, 136, "size"),
            (136, 148, "mtime"))


class Member:
    """One member.  size: the bytes its data takes in the archive; realsize: the
    file's length (they differ for a sparse file, whose data runs are sparse:
    (offset, length) pairs, or None)."""

    __slots__ = ("name", "linkname", "type", "mode", "uid", "gid", "size", "mtime_ns",
                 "devmajor", "devminor", "xattrs", "sparse", "realsize")

    def __init__(self) -> None:
        self.xattrs: dict[str, bytes] | None = None
        self.sparse: list[tuple[int, int]] | None = None


class TarReader:
    """Members of a tar stream, one by one (next()), and their data (copy(),
    copy_at()); what is not read of a member's data is skipped by next()."""

    __slots__ = ("stream", "buf", "pos", "offset", "left", "pad", "globals", "end")

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.buf = b""
        self.pos = 0
        self.offset = 0              # of buf[0] in the stream
        self.left = 0                # data of the current member still unread
        self.pad = 0                 # and the padding after it
        self.globals: dict[bytes, bytes] = {}
        self.end = -1                # where the end-of-archive was found

    # --- the stream ---------------------------------------------------------------
    def _fill(self) -> bool:
        data = self.stream.read(CHUNK)  # type: ignore[attr-defined]
        if not data:
            return False
        self.offset += self.pos
        self.buf = self.buf[self.pos:] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    def _take(self, size: int) -> bytes:
        """size bytes, or fewer at the end of the stream."""
        while len(self.buf) - self.pos < size and self._fill():
            pass
        data = self.buf[self.pos:self.pos + size]
        self.pos += len(data)
        return data

    def _skip(self, size: int) -> None:
        while size:
            if self.pos == len(self.buf) and not self._fill():
                raise BadLayer("the layer tar ends early: the archive is truncated")
            step = min(size, len(self.buf) - self.pos)
            self.pos += step
            size -= step

    def _block_data(self, size: int, what: str) -> bytes:
        """The data of an extended header, with its padding."""
        if size > EXT_LIMIT:
            raise BadLayer(f"a tar member has a {what} of {size} bytes, more than the "
                           f"{EXT_LIMIT} allowed")
        data = self._take(size + (-size % BLOCK))
        if len(data) < size + (-size % BLOCK):
            raise BadLayer("the layer tar ends early: the archive is truncated")
        return data[:size]

    # --- data ---------------------------------------------------------------------
    def copy(self, size: int, fd: int, digest: object = None) -> None:
        """Write the next size bytes of the member's data to fd (hashed into
        digest)."""
        if size > self.left:
            raise BadLayer("a tar member's data runs past its size")
        self.left -= size
        while size:
            if self.pos == len(self.buf) and not self._fill():
                raise BadLayer("the layer tar ends early: the archive is truncated")
            step = min(size, len(self.buf) - self.pos)
            view = memoryview(self.buf)[self.pos:self.pos + step]
            if digest is not None:
                digest.update(view)  # type: ignore[attr-defined]
            while view:
                view = view[os.write(fd, view):]
            self.pos += step
            size -= step

    def views(self, size: int) -> list[memoryview]:
        """The next size bytes of the member's data, as views of the chunks read."""
        if size > self.left:
            raise BadLayer("a tar member's data runs past its size")
        self.left -= size
        found = []
        while size:
            if self.pos == len(self.buf) and not self._fill():
                raise BadLayer("the layer tar ends early: the archive is truncated")
            step = min(size, len(self.buf) - self.pos)
            found.append(memoryview(self.buf)[self.pos:self.pos + step])
            self.pos += step
            size -= step
        return found

    def copy_at(self, size: int, fd: int, offset: int) -> None:
        """Write the next size bytes of the member's data at offset of fd."""
        if size > self.left:
            raise BadLayer("a tar member's data runs past its size")
        self.left -= size
        while size:
            if self.pos == len(self.buf) and not self._fill():
                raise BadLayer("the layer tar ends early: the archive is truncated")
            step = min(size, len(self.buf) - self.pos)
            view = memoryview(self.buf)[self.pos:self.pos + step]
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            self.pos += step
            size -= step

    # --- headers ------------------------------------------------------------------
    def next(self) -> Member | None:
        """The next member, or None at the end of the archive (having checked
        what follows it)."""
        if self.left or self.pad:
            self._skip(self.left + self.pad)
            self.left = self.pad = 0
        pax: dict[bytes, bytes] = {}
        runs: list[bytes] = []
        longname = longlink = None
        for _ in range(MAX_EXT + 1):
            start = self.offset + self.pos
            head = self._take(BLOCK)
            if len(head) < BLOCK or head == ZERO_BLOCK:
                if pax or runs or longname is not None or longlink is not None:
                    raise BadLayer("the layer tar ends early: the archive is truncated")
                self._end(start, head)
                return None
            check_sum(head, start)
            kind = head[156:157]
            if kind not in _EXTENDED:
                return self._member(head, kind, pax, runs, longname, longlink)
            data = self._block_data(size_of(head), "long name" if kind in (b"L", b"K")
                                    else "PAX header")
            if kind == b"L":
                longname = as_text(field(data))
            elif kind == b"K":
                longlink = as_text(field(data))
            elif kind == b"g":
                parse_pax(data, self.globals, [])
                if sum(len(k) + len(v) for k, v in self.globals.items()) > EXT_LIMIT:
                    raise BadLayer("the layer tar's global PAX headers are too large")
            else:
                parse_pax(data, pax, runs)
        raise BadLayer(f"more than {MAX_EXT} extended headers precede one tar member")

    def _end(self, start: int, head: bytes) -> None:
        """The end: a zero block, or the end of the stream where a header would
        start.  What follows must be a bounded run of zeros (tarend)."""
        if start == 0 and not head:
            raise BadLayer("the layer is not a valid tar archive: empty file")
        if head.count(0) != len(head):
            raise BadLayer("the layer tar ends early: the archive is truncated")
        self.end = start
        seen = self.buf[self.pos:]
        problem = tail_problem(seen, self.stream, len(head) + len(seen))
        self.offset += len(self.buf)
        self.buf, self.pos = b"", 0
        if problem is not None:
            raise BadLayer(f"{problem}; refusing it")

    def _member(self, head: bytes, kind: bytes, pax: dict[bytes, bytes], runs: list[bytes],
                longname: str | None, longlink: str | None) -> Member:
        member = Member()
        mtype = _KIND.get(kind)
        if mtype is None:
            raise BadLayer(f"archive member {quote(as_text(field(head[:100])))} has an unsupported "
                           f"type {kind!r}")
        name = field(head[:100])
        if head[257:263] == b"ustar\x00" and head[345] != 0:       # POSIX: a prefix
            name = field(head[345:500]) + b"/" + name
        if kind == b"\0" and name.endswith(b"/"):
            mtype = DIR                      # old tars: a directory is a file named "x/"
        member.type = mtype
        member.name = longname if longname is not None else as_text(name)
        member.linkname = longlink if longlink is not None else as_text(field(head[157:257]))
        try:
            if head[100:148].translate(None, b"01234567 \0"):
                raise ValueError             # base-256, or malformed: number() tells
            # The usual: octal digits between spaces, ended by a NUL (as number()).
            mode, member.uid, member.gid, size, mtime = (
                int(raw.partition(b"\0")[0].strip(b" ") or b"0", 8)
                for raw in _OCTALS.unpack_from(head))
        except ValueError:
            mode, member.uid, member.gid, size, mtime = (
                number(head[a:b], what) for a, b, what in _NUMBERS)
        member.mode = mode & 0o7777
        member.mtime_ns = mtime * 1_000_000_000
        if mtype in (CHR, BLK):
            member.devmajor = number(head[329:337], "device number")
            member.devminor = number(head[337:345], "device number")
        else:
            member.devmajor = member.devminor = 0
        values = {**self.globals, **pax} if self.globals else pax
        if values:
            size = self._apply_pax(member, values, size)
        if mtype == DIR:
            member.name = member.name.rstrip("/")     # "/" is the layer root, as "."
        if not -MAX_TIME_NS <= member.mtime_ns <= MAX_TIME_NS:
            raise BadLayer(f"archive member {quote(member.name)} has an impossible mtime")
        member.uid = checked_id(member.uid, "uid")
        member.gid = checked_id(member.gid, "gid")
        if size < 0 or member.devmajor < 0 or member.devminor < 0:
            raise BadLayer(f"archive member {quote(member.name)} has a negative size or device number")
        member.realsize = size
        if mtype != REG:
            size = 0             # links, directories, devices: any data is ignored
        self.left, self.pad = size, -size % BLOCK
        if kind == b"S":
            self._old_sparse(member, head)
        elif values and (runs or b"GNU.sparse.map" in values or b"GNU.sparse.major" in values):
            self._pax_sparse(member, values, runs)
        member.size = self.left
        if member.sparse is not None:
            if sum(n for _, n in member.sparse) > self.left:
                raise BadLayer(f"archive member {quote(member.name)} has a sparse map larger than its data")
            if any(o < 0 or n < 0 or o + n > member.realsize for o, n in member.sparse):
                raise BadLayer(f"archive member {quote(member.name)} has a sparse map beyond its size")
        return member

    def _apply_pax(self, member: Member, values: dict[bytes, bytes], size: int) -> int:
        for key, value in values.items():
            if key == b"path" or key == b"GNU.sparse.name":
                if b"\0" in value:
                    raise BadLayer(f"archive member {quote(as_text(value))} has a NUL in its name")
                if key == b"path" and b"GNU.sparse.name" in values:
                    continue
                member.name = as_text(value)
            elif key == b"linkpath":
                if b"\0" in value:
                    raise BadLayer(f"archive member {quote(member.name)} has a NUL in its link target")
                member.linkname = as_text(value)
            elif key == b"size":
                size = decimal(value, "size")
            elif key == b"mtime":
                member.mtime_ns = pax_time_ns(value)
            elif key == b"uid":
                member.uid = decimal(value, "uid")
            elif key == b"gid":
                member.gid = decimal(value, "gid")
            elif key.startswith(b"SCHILY.xattr."):
                if member.xattrs is None:
                    member.xattrs = {}
                member.xattrs[as_text(key[13:])] = value
        return size

    def _old_sparse(self, member: Member, head: bytes) -> None:
        """GNU's old sparse header: four runs in the header, more in blocks after it."""
        runs = []
        area, count, extended = head[386:482], 4, head[482]
        member.realsize = number(head[483:495], "size")
        while True:
            for n in range(count):
                entry = area[24 * n:24 * n + 24]
                if entry[0] == 0:
                    break
                runs.append((number(entry[:12], "sparse offset"),
                             number(entry[12:], "sparse length")))
            if not extended:
                break
            if len(runs) > MAX_SPARSE:
                raise BadLayer(f"archive member {quote(member.name)} has too many sparse runs")
            area = self._take(BLOCK)
            if len(area) < BLOCK:
                raise BadLayer("the layer tar ends early: the archive is truncated")
            count, extended = 21, area[504]
        member.sparse = runs

    def _pax_sparse(self, member: Member, values: dict[bytes, bytes], runs: list[bytes]) -> None:
        """GNU sparse in PAX: 0.0 (runs as repeated records), 0.1 (GNU.sparse.map)
        or 1.0 (the map at the start of the data, in its own blocks)."""
        real = values.get(b"GNU.sparse.realsize", values.get(b"GNU.sparse.size"))
        if real is None:
            raise BadLayer(f"archive member {quote(member.name)} is sparse without a size")
        member.realsize = decimal(real, "sparse size")
        if values.get(b"GNU.sparse.major") == b"1":
            numbers = self._sparse_map_10(member)
        else:
            numbers = runs if runs else values.get(b"GNU.sparse.map", b"").split(b",")
            if numbers == [b""]:
                numbers = []
        if len(numbers) % 2 or len(numbers) > 2 * MAX_SPARSE:
            raise BadLayer(f"archive member {quote(member.name)} has a malformed sparse map")
        ints = [decimal(n, "sparse map") for n in numbers]
        member.sparse = list(zip(ints[::2], ints[1::2]))

    def _sparse_map_10(self, member: Member) -> list[bytes]:
        """Sparse 1.0: decimal lines, the count of runs then offset and length of
        each, padded to whole blocks; the member's data follows."""
        text = b""
        while True:
            if self.left < BLOCK or len(text) >= EXT_LIMIT:
                raise BadLayer(f"archive member {quote(member.name)} has a malformed sparse map")
            block = self._take(BLOCK)
            if len(block) < BLOCK:
                raise BadLayer("the layer tar ends early: the archive is truncated")
            self.left -= BLOCK
            text += block
            lines = text.split(b"\n")
            if lines[0] and lines[0].isdigit() and len(lines) - 1 >= 1 + 2 * int(lines[0]):
                return lines[1:1 + 2 * int(lines[0])]
