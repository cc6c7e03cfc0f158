"""One image layer as a tar stream: unpacking into a layer directory (packing
is in ``layerpack``), converting OCI whiteouts to overlayfs ones.

OCI marks a deleted path with an empty file ``.wh.NAME`` and a directory whose
lower contents are hidden with ``.wh..wh..opq``; overlayfs marks the same with a
character device 0/0 named NAME and the xattr ``trusted.overlay.opaque=y``.
The kernel's other ``trusted.overlay.*`` xattrs describe one particular mount
(origin, impure, redirect…), so they are never read from nor written to a tar.

Unpacking trusts nothing in the archive: every member name is checked
(no absolute names, no ``..``), every directory on the way to a member is
checked with lstat (so a symlink planted by the archive is never followed), and
hard links must point at something this same layer already holds.  Files are
created with O_EXCL|O_NOFOLLOW after removing what was there, as tar does.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile

from stacko.errors import StackoError
from stacko.formats.tarend import TarEnd
from stacko.quoting import quote
from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable, Sequence

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
PAX_XATTR_PREFIX = "SCHILY.xattr."
CHUNK = 1 << 20


class HostileArchive(StackoError):
    """A member would write outside its layer or through a planted symlink."""


class BadLayer(StackoError):
    """A layer tar that cannot be unpacked (corrupt, or an unsupported member)."""


class NoSpace(StackoError):
    """An archive that would not fit in the free space of the root's filesystem."""


BLOCK = 4096
SPARE_INODES = 64


class SpaceBudget:
    """What an import may still write: the free space and the free inodes of the
    filesystem when it began.  Each member is charged before it is made: an
    inode, and its data in whole blocks (a block for anything but a regular
    file: a directory takes one).  So an archive that unpacks to more than the
    disk holds (a gzip bomb, a header that claims a huge file, 30,000 empty
    directories in 141 KB) is refused instead of filling the disk."""

    def __init__(self, path: str, what: str = "the archive") -> None:
        import threading      # layers may unpack in parallel, from one budget
        st = os.statvfs(path)
        self.path = path
        self.what = what
        self.left = st.f_bavail * st.f_frsize
        # No inode count (btrfs makes them as it goes): no limit on them.  ext4
        # keeps no inodes for root: a few are left for the import to finish
        # (its manifests, the metadata) and for the host.
        self.inodes_free = max(0, st.f_favail - SPARE_INODES) if st.f_files else -1
        self.inodes = self.inodes_free
        self.lock = threading.Lock()

    def take(self, size: int, what: str | Callable[[], str], inodes: int = 0) -> None:
        """what: the member, or a function that names it (the message is only
        made when it is needed: quoting every
        member's name cost a tenth of an unpack's CPU time: docs/bench.md)."""
        size = -(-size // BLOCK) * BLOCK       # whole blocks, as the filesystem counts
        with self.lock:
            if (size > self.left or inodes > self.inodes >= 0) and callable(what):
                what = what()
            if size > self.left:
                raise NoSpace(f"{self.what} does not fit in the free space of the filesystem of "
                              f"{self.path}: {what} needs {size} bytes, {self.left} are left",
                              hint=NO_SPACE_HINT)
            if inodes > self.inodes >= 0:
                raise NoSpace(f"{self.what} does not fit on the filesystem of {self.path}: "
                              f"it makes more files and directories than the "
                              f"{self.inodes_free} inodes that were free ({what} is one "
                              "too many)", hint=NO_SPACE_HINT)
            self.left -= size
            if self.inodes >= 0:
                self.inodes -= inodes

    def take_entry(self, what: str | Callable[[], str]) -> None:
        """A member that is not a regular file: an inode and a block."""
        self.take(BLOCK, what, inodes=1)


NO_SPACE_HINT = ("free some space (`stacko df` shows what can be reclaimed), or use a root "
                 "on a larger filesystem")


def data_size(member: tarfile.TarInfo) -> int:
    """The bytes a regular member really stores: a sparse one only its data."""
    sparse = getattr(member, "sparse", None)
    if sparse:
        return sum(size for _, size in sparse)
    return member.size


# --- names ---------------------------------------------------------------------
def clean_name(name: str, member: str) -> str:
    """The member's path relative to the layer root ('' for the root itself)."""
    if name.startswith("/"):
        raise HostileArchive(f"archive member {quote(member)} has an absolute name; refusing it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileArchive(f"archive member {quote(member)} climbs out with '..'; refusing it")
    return "/".join(parts)


def pax_mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds; PAX keeps fractions a float would round."""
    text = member.pax_headers.get("mtime")
    if text:
        import decimal    # here: for the members with a PAX mtime only
        try:
            return int(decimal.Decimal(text) * 1_000_000_000)
        except decimal.InvalidOperation:
            pass
    return int(member.mtime) * 1_000_000_000


def member_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found = {}
    for key, value in member.pax_headers.items():
        if key.startswith(PAX_XATTR_PREFIX):
            name = key[len(PAX_XATTR_PREFIX):]
            if not name.startswith(OVERLAY_XATTR_PREFIX):
                found[name] = value.encode("utf-8", "surrogateescape")
    return found


# --- unpacking -----------------------------------------------------------------
@record
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int


class Unpacker:
    """Unpacks one layer tar into ``root`` (an empty directory).

    ``lowers`` are the layer directories beneath this one, top first: a
    directory that the tar fills without naming it copies its owner and mode
    from there, so that the merged view does not change it.
    """
    __slots__ = ("root", "lowers", "budget", "_dirs", "_meta", "_opaque", "hashes",
                 "before_finish", "_implicit")

    def __init__(self, root: str, lowers: Sequence[str] = (), budget: SpaceBudget | None = None,
                 before_finish: Callable[[], None] | None = None) -> None:
        self.root = root
        self.lowers = lowers
        self.budget = budget
        self._dirs: set[str] = set()             # checked: real directories
        self._meta: dict[str, _DirMeta] = {}
        self._opaque: set[str] = set()
        # inode -> sha256 of the data written, for the content manifest (content.py),
        # so that the files are not read back to hash them.
        self.hashes: dict[int, str] = {}
        # Called once the tar is read and before the layers beneath are looked at:
        # a pull unpacks several layers at once, and waits there for those beneath.
        self.before_finish = before_finish
        self._implicit: list[str] = []

    def unpack(self, stream: io.BufferedIOBase) -> None:
        watched = TarEnd(stream)
        try:
            with tarfile.open(fileobj=watched, mode="r|", errorlevel=2) as tar:
                for member in tar:
                    try:
                        self._member(tar, member)
                    except (ValueError, OverflowError) as e:
                        # A NUL in a PAX name or link target, an owner or a time
                        # beyond what the system can store.
                        raise BadLayer(f"archive member {quote(member.name)} has an impossible "
                                       f"value ({e}); refusing it") from None
                end = tar.offset          # where tarfile found the end of the archive
            problem = watched.problem(end)
            if problem is not None:
                raise BadLayer(f"{problem}; refusing it")
        except tarfile.TarError as e:
            raise BadLayer(f"the layer is not a valid tar archive: {e}") from None
        except EOFError:
            raise BadLayer("the layer tar ends early: the archive is truncated") from None
        self._finish()

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = clean_name(member.name, member.name)
        if not rel:
            if member.isdir():       # the layer root itself: keep its attributes
                self._meta[""] = _DirMeta(member.mode, member.uid, member.gid, pax_mtime_ns(member))
                self._set_xattrs(self.root, member_xattrs(member))
            return
        parent, _, base = rel.rpartition("/")
        self._ensure_dir(parent, member.name)
        if base == OPAQUE_MARKER:
            self._opaque.add(parent)
            return
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base[len(WHITEOUT_PREFIX):], member.name)
            return
        path = self._path(rel)
        if member.isdir():
            self._make_dir(rel, path, member)
            return
        if not (member.isreg() or member.issym() or member.islnk() or member.ischr()
                or member.isblk() or member.isfifo()):
            raise BadLayer(f"archive member {quote(member.name)} has an unsupported type "
                           f"{member.type!r}")
        if self.budget is not None and not member.isreg():      # a file: in _write_file
            self.budget.take_entry(lambda: f"archive member {quote(member.name)}")
        try:
            self._create(tar, member, path)
        except FileExistsError:
            # A path named again (by an earlier member of this tar): make room,
            # as tar does.  Tried after the creation fails, not before each one:
            # an lstat per member is 3 % of an import.
            self._remove(rel, path)
            self._create(tar, member, path)
        if not member.islnk():      # a hard link shares its target's inode and attributes
            self._set_attrs(path, member)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        """Create the non-directory member at path; FileExistsError if something is there."""
        if member.isreg():
            self._write_file(tar, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            self._link(member, path)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))

    def _ensure_dir(self, rel: str, member: str) -> None:
        """Make sure rel is a real directory in this layer, never a symlink."""
        if not rel or rel in self._dirs:
            return
        parts = rel.split("/")
        for depth in range(1, len(parts) + 1):     # a loop: archives may nest deeply
            sub = "/".join(parts[:depth])
            if sub in self._dirs:
                continue
            path = self._path(sub)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._implicit_dir(sub, path)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise HostileArchive(f"archive member {quote(member)} would be written through "
                                         f"the symlink {quote(sub)}; refusing it")
                if not stat.S_ISDIR(st.st_mode):
                    raise BadLayer(f"archive member {quote(member)} lies beneath {quote(sub)}, which is "
                                   "not a directory")
            self._dirs.add(sub)

    def _implicit_dir(self, rel: str, path: str) -> None:
        """A directory the tar fills without naming: as in the layers beneath, or
        0755 (looked up in _finish, once the layers beneath are complete)."""
        if self.budget is not None:
            self.budget.take_entry(lambda: f"the directory {quote(rel)}")
        os.mkdir(path, 0o755)
        self._implicit.append(rel)

    def _implicit_meta(self, rel: str) -> None:
        if rel in self._meta or not os.path.isdir(self._path(rel)):
            return      # named by a later member after all, or replaced
        for lower in self.lowers:
            try:
                st = os.lstat(os.path.join(lower, rel))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(st.st_mode):
                self._meta[rel] = _DirMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                           st.st_mtime_ns)
                return
            break        # whatever is found first decides, as in the merged view
        self._meta[rel] = _DirMeta(0o755, 0, 0, 0)

    def _make_dir(self, rel: str, path: str, member: tarfile.TarInfo) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self._remove(rel, path)
            st = None
        if st is None:
            if self.budget is not None:
                self.budget.take_entry(lambda: f"archive member {quote(member.name)}")
            os.mkdir(path, 0o700)
        self._dirs.add(rel)
        self._meta[rel] = _DirMeta(member.mode, member.uid, member.gid, pax_mtime_ns(member))
        self._set_xattrs(path, member_xattrs(member))

    def _whiteout(self, parent: str, name: str, member: str) -> None:
        rel = f"{parent}/{name}" if parent else name
        if not name or name in (".", "..") or "/" in name:
            raise HostileArchive(f"archive member {quote(member)} is a malformed whiteout")
        path = self._path(rel)
        if os.path.lexists(path):
            return    # a whiteout hides lower layers only, never its own layer's entry
        if self.budget is not None:
            self.budget.take_entry(lambda: f"archive member {quote(member)}")
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def _remove(self, rel: str, path: str) -> None:
        """Make room for a member, as tar does when a later member names a path again."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            prefix = rel + "/"
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(prefix)}
            for key in [k for k in self._meta if k == rel or k.startswith(prefix)]:
                del self._meta[key]
            self._opaque = {d for d in self._opaque if d != rel and not d.startswith(prefix)}
        else:
            os.unlink(path)

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)      # FileExistsError before the budget is charged: see _member
        if self.budget is not None:
            try:
                self.budget.take(data_size(member), lambda: f"archive member {quote(member.name)}",
                                 inodes=1)
            except BaseException:
                os.close(fd)
                raise
        if member.sparse:
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                if source is not None:
                    self._write_sparse(source, member, out)
            return      # not hashed here: content.build reads it (holes read as zeros)
        try:
            digest = _copy_data(tar.fileobj, member.size, fd)  # type: ignore[arg-type]
            self.hashes[os.fstat(fd).st_ino] = digest
        finally:
            os.close(fd)

    @staticmethod
    def _write_sparse(source: io.BufferedIOBase, member: tarfile.TarInfo,
                      out: io.BufferedIOBase) -> None:
        """A sparse member (GNU or PAX): write only its data, at its offsets, in
        the order the archive holds them (a stream only goes forward), and let
        the file's length make the holes.  The unbuffered reader beneath
        extractfile's, since the buffered one asks a stream for seekable()."""
        raw = source.raw  # type: ignore[attr-defined]
        for offset, size in member.sparse:  # type: ignore[attr-defined]
            raw.seek(offset)
            out.seek(offset)
            while size > 0:
                data = raw.read(min(size, CHUNK))
                if not data:
                    raise EOFError
                out.write(data)
                size -= len(data)
        out.truncate(member.size)

    def _link(self, member: tarfile.TarInfo, path: str) -> None:
        target = clean_name(member.linkname, member.name)
        if not target:
            raise HostileArchive(f"archive member {quote(member.name)} links to the layer root")
        self._ensure_dir(target.rpartition("/")[0], member.name)
        target_path = self._path(target)
        try:
            st = os.lstat(target_path)
        except FileNotFoundError:
            raise HostileArchive(f"archive member {quote(member.name)} is a hard link to "
                                 f"{quote(member.linkname)}, which this layer does not hold") from None
        if stat.S_ISDIR(st.st_mode):
            raise HostileArchive(f"archive member {quote(member.name)} is a hard link to a directory")
        os.link(target_path, path, follow_symlinks=False)

    def _set_attrs(self, path: str, member: tarfile.TarInfo) -> None:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        self._set_xattrs(path, member_xattrs(member))
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)   # after chown, which clears setuid
        mtime = pax_mtime_ns(member)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)

    @staticmethod
    def _set_xattrs(path: str, xattrs: dict[str, bytes]) -> None:
        for name, value in sorted(xattrs.items()):
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as e:
                raise BadLayer(f"cannot set xattr {name} on {path}: {e.strerror}") from None

    def _finish(self) -> None:
        if self.before_finish is not None:
            self.before_finish()
        for rel in self._implicit:
            self._implicit_meta(rel)
        for rel in self._opaque:
            os.setxattr(self._path(rel), OPAQUE_XATTR, b"y", follow_symlinks=False)
        # Deepest first: setting a directory's time must come after its children.
        for rel in sorted(self._meta, key=lambda r: (-r.count("/"), r), reverse=False):
            meta = self._meta[rel]
            path = self._path(rel)
            os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
            os.chmod(path, meta.mode & 0o7777)
            if meta.mtime_ns:
                os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)


def _copy_data(stream: io.BufferedIOBase, size: int, fd: int) -> str:
    """Copy a regular member's size bytes from the tar stream to fd; returns
    their sha256.  Read from tarfile's stream itself (which skips the padding
    when it moves on to the next header), as extractfile would, but without the
    two file objects it builds for every member and a buffered writer: those
    were a tenth of an import's CPU time (docs/bench.md)."""
    digest = hashlib.sha256()
    while size > 0:
        data = stream.read(min(size, CHUNK))
        if not data:
            raise EOFError("the layer tar ends inside a member")
        digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        size -= len(data)
    return digest.hexdigest()


def unpack_layer(stream: io.BufferedIOBase, root: str, lowers: Sequence[str] = (),
                 before_finish: Callable[[], None] | None = None,
                 budget: SpaceBudget | None = None) -> dict[int, str]:
    """Unpack a layer tar into root; returns inode -> sha256 of every file written
    (but for sparse files: content.build reads those)."""
    unpacker = Unpacker(root, lowers, before_finish=before_finish, budget=budget)
    try:
        unpacker.unpack(stream)
        return unpacker.hashes
    except OSError as e:
        raise BadLayer(f"cannot unpack into {quote(e.filename or root)}: {e.strerror}") from None
    except (ValueError, OverflowError) as e:      # a directory's owner or time, set last
        raise BadLayer(f"the layer has an impossible value ({e}); refusing it") from None
