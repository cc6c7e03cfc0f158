"""Packing a layer directory into a deterministic OCI layer tar, converting
overlayfs whiteouts (character devices 0/0, ``trusted.overlay.opaque``) back to
OCI ones (``.wh.NAME``, ``.wh..wh..opq``); ``layertar`` unpacks.

Entries come sorted by name, with numeric owners and no user names, access or
change times, so the same directory always gives the same bytes.
"""
from __future__ import annotations

import os
import stat

from stacko.errors import StackoError
from stacko.formats.spellings import (OPAQUE_MARKER, OPAQUE_XATTR, OVERLAY_XATTR_PREFIX,
                                      PAX_XATTR_PREFIX, WHITEOUT_PREFIX)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import io
    import tarfile

CHUNK = 1 << 20
# tarfile's type flags and ustar magic, so that tarfile (~5 ms of a push) is
# imported only for the odd entry that needs a PAX header.
REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = \
    b"0", b"1", b"2", b"3", b"4", b"5", b"6"
POSIX_MAGIC = b"ustar\x0000"


def _xattrs_of(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in sorted(names):
        if name.startswith(OVERLAY_XATTR_PREFIX):
            continue
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    import tarfile
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = st.st_mtime_ns // 1_000_000_000
    frac = st.st_mtime_ns % 1_000_000_000
    if frac:
        info.pax_headers["mtime"] = f"{info.mtime}.{frac:09d}".rstrip("0")
    return info


def pack_layer(root: str, out: io.BufferedIOBase) -> None:
    """Write the layer directory root as a deterministic OCI layer tar.

    Entries come sorted by name, with numeric owners and no user names, access
    or change times, so the same directory always gives the same bytes.
    """
    links: dict[tuple[int, int], str] = {}
    tar = TarWriter(out)
    top = root.rstrip("/") + "/"            # os.path.join's result, without its cost
    # Pre-order, names sorted, without recursion (a layer may be deep).
    stack: list[tuple[str, list[str]]] = [("", _sorted_names(root))]
    while stack:
        rel, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        child = f"{rel}/{name}" if rel else name
        path = top + child
        if _pack_entry(tar, path, child, links):
            stack.append((child, _sorted_names(path)))
    tar.close()


class TarWriter:
    """A PAX tar stream, written to out in large pieces: one write per MiB
    rather than three per entry (each write passes through two hashes and a
    compressor).  Headers that need no PAX extension (ASCII names up to 100
    characters, whole-second times, no xattrs: nearly every entry of a layer)
    are built here, byte for byte as tarfile builds them and at a fraction of
    its cost; tarfile builds the others.  File data is copied in large reads
    (tarfile's own copy loop reads 16 KiB at a time)."""

    RECORD = 20 * 512         # what tar and tarfile pad the archive to
    FLUSH = 1 << 20

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.out = out
        self.offset = 0
        self.buffer = bytearray()

    def _write(self, data: bytes) -> None:
        self.offset += len(data)
        if len(data) >= self.FLUSH:
            self._flush()
            self.out.write(data)
            return
        self.buffer += data
        if len(self.buffer) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.out.write(self.buffer)  # type: ignore[arg-type]
            self.buffer = bytearray()     # a fresh one: out may hold on to what it got

    def write_header(self, header: bytes) -> None:
        self.buffer += header
        self.offset += len(header)
        if len(self.buffer) >= self.FLUSH:
            self._flush()

    def add_data(self, path: str, size: int) -> None:
        """The file's data and its padding: a file under a MiB in one read,
        straight into the buffer; a larger one in reads of a MiB."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size < self.FLUSH:
                data = os.read(fd, size)
                while len(data) < size:         # a short read: rare, but allowed
                    more = os.read(fd, size - len(data))
                    if not more:
                        raise StackoError(f"{path} shrank while it was being exported")
                    data += more
                pad = -size % 512
                self.buffer += data
                self.buffer += ZEROS[:pad]
                self.offset += size + pad
                if len(self.buffer) >= self.FLUSH:
                    self._flush()
                return
            left = size
            while left:
                data = os.read(fd, min(left, CHUNK))
                if not data:
                    raise StackoError(f"{path} shrank while it was being exported")
                self._write(data)
                left -= len(data)
        finally:
            os.close(fd)
        if size % 512:
            self._write(ZEROS[:512 - size % 512])

    def close(self) -> None:
        self._write(b"\0" * 1024)
        if self.offset % self.RECORD:
            self._write(b"\0" * (self.RECORD - self.offset % self.RECORD))
        self._flush()


ZEROS = bytes(512)
_OWNERS = POSIX_MAGIC + b"\0" * 64      # the magic, then no user or group name
_NO_DEVICE = b"\0" * 16
_TAIL = b"\0" * (155 + 12)                      # no prefix, and the block's end
_MAX7, _MAX11 = 8 ** 7, 8 ** 11
_SPACES_SUM, _OWNERS_SUM = 8 * ord(" "), sum(_OWNERS)


def ustar_header(name: str, mode: int, uid: int, gid: int, size: int, mtime: int,
                 kind: bytes, linkname: str = "",
                 device: tuple[int, int] | None = None) -> bytes | None:
    """The block tarfile's TarInfo.tobuf(PAX_FORMAT) gives for an entry that
    needs no extended header (no pax_headers, no user names); None when it
    would need one, or a field does not fit: tarfile must build that one.
    tests/test_layerpack.py holds the two to the same bytes."""
    if not (0 <= uid < _MAX7 and 0 <= gid < _MAX7 and 0 <= size < _MAX11
            and 0 <= mtime < _MAX11) or len(name) > 100 or len(linkname) > 100 \
            or not name.isascii() or not linkname.isascii():
        return None
    if device is None:
        devices = _NO_DEVICE
    elif 0 <= device[0] < _MAX7 and 0 <= device[1] < _MAX7:
        devices = b"%07o\0%07o\0" % device
    else:
        return None
    encoded, link = name.encode("ascii"), linkname.encode("ascii")
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
    # The checksum is the sum of the block's bytes with its own field as eight
    # spaces: summed here over the parts that are not zeros (a third of the
    # time of summing the block).
    checksum = sum(encoded) + sum(numbers) + _SPACES_SUM + kind[0] + sum(link) + _OWNERS_SUM \
        + (sum(devices) if device is not None else 0)
    return b"".join((encoded.ljust(100, b"\0"), numbers, b"%06o\0 " % checksum, kind,
                     link.ljust(100, b"\0"), _OWNERS, devices, _TAIL))


def _sorted_names(directory: str) -> list[str]:
    """The entries of directory, last first (they are popped from the end)."""
    with os.scandir(directory) as it:
        return sorted((e.name for e in it), reverse=True)


def _pack_entry(tar: TarWriter, path: str, rel: str,
                links: dict[tuple[int, int], str]) -> bool:
    """Add one entry; True when it is a directory to descend into."""
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISCHR(mode) and st.st_rdev == 0:          # overlayfs whiteout
        parent, _, base = rel.rpartition("/")
        _add(tar, f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base,
             st, REGTYPE, mode=0o644)
        return False
    xattrs = _xattrs_of(path)
    if stat.S_ISDIR(mode):
        _add(tar, rel, st, DIRTYPE, xattrs=xattrs)
        if _is_opaque(path):
            _add(tar, f"{rel}/{OPAQUE_MARKER}", st, REGTYPE, mode=0o644)
        return True
    if stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            _add(tar, rel, st, LNKTYPE, linkname=links[key], xattrs=xattrs)
            return False
        if st.st_nlink > 1:
            links[key] = rel
        _add(tar, rel, st, REGTYPE, size=st.st_size, xattrs=xattrs, data=path)
    elif stat.S_ISLNK(mode):
        _add(tar, rel, st, SYMTYPE, linkname=os.readlink(path), xattrs=xattrs)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        _add(tar, rel, st, CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE,
             device=(os.major(st.st_rdev), os.minor(st.st_rdev)), xattrs=xattrs)
    elif stat.S_ISFIFO(mode):
        _add(tar, rel, st, FIFOTYPE, xattrs=xattrs)
    return False          # sockets do not go into images


def _add(tar: TarWriter, name: str, st: os.stat_result, kind: bytes, mode: int | None = None,
         size: int = 0, linkname: str = "", device: tuple[int, int] | None = None,
         xattrs: dict[str, bytes] | None = None, data: str | None = None) -> None:
    """One entry: its header (ours when it can be, else tarfile's), then the
    data of the file at path data."""
    header = None
    if not xattrs and st.st_mtime_ns % 1_000_000_000 == 0:
        shown = name + "/" if kind == DIRTYPE and name[-1:] != "/" else name
        header = ustar_header(shown,
                              stat.S_IMODE(st.st_mode) if mode is None else mode,
                              st.st_uid, st.st_gid, size, st.st_mtime_ns // 1_000_000_000,
                              kind, linkname, device)
    if header is None:
        info = _info(name, st, kind)
        if mode is not None:
            info.mode = mode
        info.size, info.linkname = size, linkname
        if device is not None:
            info.devmajor, info.devminor = device
        _add_xattrs(info, xattrs or {})
        import tarfile
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    tar.write_header(header)
    if data is not None:
        tar.add_data(data, size)


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _add_xattrs(info: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    for name, value in xattrs.items():
        info.pax_headers[PAX_XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
