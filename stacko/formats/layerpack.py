"""Packing a layer directory into a deterministic OCI layer tar, converting
overlayfs whiteouts (character devices 0/0, ``trusted.overlay.opaque``) back to
OCI ones (``.wh.NAME``, ``.wh..wh..opq``); ``layertar`` unpacks.

Entries come sorted by name, with numeric owners and no user names, access or
change times, so the same directory always gives the same bytes.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile

from stacko.errors import StackoError
from stacko.formats.layertar import WHITEOUT_PREFIX, OPAQUE_MARKER, OPAQUE_XATTR, OVERLAY_XATTR_PREFIX, PAX_XATTR_PREFIX, CHUNK


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
    # Pre-order, names sorted, without recursion (a layer may be deep).
    stack: list[tuple[str, list[str]]] = [("", _sorted_names(root))]
    while stack:
        rel, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        child = f"{rel}/{name}" if rel else name
        path = os.path.join(root, child)
        if _pack_entry(tar, path, child, links):
            stack.append((child, _sorted_names(path)))
    tar.close()


class TarWriter:
    """A PAX tar stream: tarfile builds the headers, the data is copied here in
    large reads (tarfile's own copy loop reads 16 KiB at a time)."""

    RECORD = 20 * 512         # what tar and tarfile pad the archive to

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.out = out
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def addfile(self, info: tarfile.TarInfo, path: str | None = None) -> None:
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if path is None or info.type != tarfile.REGTYPE:
            return
        left = info.size
        with open(path, "rb", buffering=0) as f:
            while left:
                data = f.read(min(left, CHUNK))
                if not data:
                    raise StackoError(f"{path} shrank while it was being exported")
                self._write(data)
                left -= len(data)
        if info.size % 512:
            self._write(b"\0" * (512 - info.size % 512))

    def close(self) -> None:
        self._write(b"\0" * 1024)
        if self.offset % self.RECORD:
            self._write(b"\0" * (self.RECORD - self.offset % self.RECORD))


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
        info = _info(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base,
                     st, tarfile.REGTYPE)
        info.mode, info.size = 0o644, 0
        tar.addfile(info)
        return False
    xattrs = _xattrs_of(path)
    if stat.S_ISDIR(mode):
        info = _info(rel, st, tarfile.DIRTYPE)
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info = _info(rel, st, tarfile.LNKTYPE)
            info.linkname = links[key]
            _add_xattrs(info, xattrs)
            tar.addfile(info)
            return False
        if st.st_nlink > 1:
            links[key] = rel
        info = _info(rel, st, tarfile.REGTYPE)
        info.size = st.st_size
    elif stat.S_ISLNK(mode):
        info = _info(rel, st, tarfile.SYMTYPE)
        info.linkname = os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info = _info(rel, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info = _info(rel, st, tarfile.FIFOTYPE)
    else:
        return False          # sockets do not go into images
    _add_xattrs(info, xattrs)
    tar.addfile(info, path)
    if stat.S_ISDIR(mode):
        if _is_opaque(path):
            marker = _info(f"{rel}/{OPAQUE_MARKER}", st, tarfile.REGTYPE)
            marker.mode, marker.size = 0o644, 0
            tar.addfile(marker)
        return True
    return False


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _add_xattrs(info: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    for name, value in xattrs.items():
        info.pax_headers[PAX_XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
