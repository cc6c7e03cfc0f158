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
The tar itself is read by ``tarstream``, which checks every header.
"""
from __future__ import annotations

import hashlib
import os
import stat

from stacko.content import Written
from stacko.errors import StackoError
from stacko.formats.filewriters import Writers, create_mode, set_up, set_xattrs, write_file
from stacko.formats.prefetch import Prefetched
from stacko.formats.spacebudget import SpaceBudget
from stacko.formats.spellings import (OPAQUE_MARKER, OPAQUE_XATTR, OVERLAY_XATTR_PREFIX,
                                      WHITEOUT_PREFIX)
from stacko.formats.tarfields import BadLayer
from stacko.formats.tarstream import (BLK, CHR, DIR, LNK, REG, SYM, Member,
                                      TarReader)
from stacko.quoting import quote
from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import io
    from collections.abc import Callable, Sequence

POOLED = 1 << 20     # files up to this size are written by the writers' threads
SERIAL_FILES = 64    # written by the unpacking thread before the writers start


class HostileArchive(StackoError):
    """A member would write outside its layer or through a planted symlink."""


# --- names ---------------------------------------------------------------------
def clean_name(name: str, member: str) -> str:
    """The member's path relative to the layer root ('' for the root itself)."""
    if "/." not in name and "//" not in name and name[:1] not in ("/", "."):
        return name.rstrip("/")          # no '.', '..' or empty part: as it is
    if name.startswith("/"):
        raise HostileArchive(f"archive member {quote(member)} has an absolute name; refusing it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileArchive(f"archive member {quote(member)} climbs out with '..'; refusing it")
    return "/".join(parts)


def member_xattrs(member: Member) -> dict[str, bytes]:
    """The member's xattrs but the kernel's trusted.overlay.* (see above)."""
    if not member.xattrs:
        return {}
    return {k: v for k, v in member.xattrs.items() if not k.startswith(OVERLAY_XATTR_PREFIX)}


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
    __slots__ = ("root", "lowers", "budget", "_dirs", "_meta", "_opaque", "known",
                 "before_finish", "written", "_implicit", "_made", "_writers", "_serial")

    def __init__(self, root: str, lowers: Sequence[str] = (), budget: SpaceBudget | None = None,
                 before_finish: Callable[[], None] | None = None,
                 written: Callable[[], None] | None = None) -> None:
        self.root = root
        self.lowers = lowers
        self.budget = budget
        self._dirs: set[str] = set()             # checked: real directories
        self._meta: dict[str, _DirMeta] = {}
        self._opaque: set[str] = set()
        # The files written, for the content manifest (content.Written): their
        # data is not read back to hash it, nor most of them looked at again.
        self.known = Written()
        # Called once the tar is read and before the layers beneath are looked at:
        # a pull unpacks several layers at once, and waits there for those beneath.
        self.before_finish = before_finish
        # Called once every file is written, before before_finish: an import
        # starts the layer's write-back there (unpacking.py).
        self.written = written
        self._implicit: list[str] = []
        self._made: set[str] = set()             # what this layer made, but directories
        self._writers: Writers | None = None     # started after SERIAL_FILES files
        self._serial = 0

    def unpack(self, stream: io.BufferedIOBase) -> None:
        tar = TarReader(stream)
        try:
            while True:
                member = tar.next()
                if member is None:
                    break
                try:
                    self._member(tar, member)
                except (ValueError, OverflowError) as e:
                    # A NUL in a name, an owner or a time beyond what the system can store.
                    raise BadLayer(f"archive member {quote(member.name)} has an impossible "
                                   f"value ({e}); refusing it") from None
            self._settle()
        finally:
            if self._writers is not None:
                self._writers.close()
        if self.written is not None:
            self.written()
        self._finish()

    def _pending(self, rel: str) -> bool:
        return self._writers is not None and rel in self._writers.pending

    def _settle(self) -> None:
        """Wait for the files handed to the writers; redo, after making room, those
        whose path was taken (by something this layer did not make)."""
        if self._writers is None:
            return
        for job in self._writers.settle():
            path = job[0]
            self._remove(path[len(self.root) + 1:], path)
            write_file(job, self.known)

    def _path(self, rel: str) -> str:
        return self.root + "/" + rel if rel else self.root

    def _member(self, tar: TarReader, member: Member) -> None:
        rel = clean_name(member.name, member.name)
        kind = member.type
        if not rel:
            if kind == DIR:       # the layer root itself: keep its attributes
                self._meta[""] = _DirMeta(member.mode, member.uid, member.gid, member.mtime_ns)
                self._set_xattrs(self.root, member_xattrs(member))
            return
        parent, _, base = rel.rpartition("/")
        if parent and parent not in self._dirs:
            self._ensure_dir(parent, member.name)
        if base[:4] == WHITEOUT_PREFIX:
            if base == OPAQUE_MARKER:
                self._opaque.add(parent)
            else:
                self._whiteout(parent, base[len(WHITEOUT_PREFIX):], member.name)
            return
        path = self._path(rel)
        again = rel in self._made or rel in self._dirs     # named again, in this tar
        if again or kind == LNK:
            self._settle()           # what is at the path (or links to) must be there
        if kind == DIR:
            self._make_dir(rel, path, member)
            return
        if kind == REG and member.sparse is None and member.size <= POOLED and not again:
            # Handed to the writers (who charge the budget); its data stays in
            # the reader's chunks till then.
            self._made.add(rel)
            job = (path, tar.views(member.size), member.uid, member.gid, member.mode,
                   member.mtime_ns, member_xattrs(member) if member.xattrs else None)
            if self._writers is None and self._serial < SERIAL_FILES:
                # A small layer is written by this thread alone: no threads to start.
                self._serial += 1
                if self.budget is not None:
                    self.budget.take(member.size,
                                     lambda: f"archive member {quote(member.name)}", inodes=1)
                try:
                    write_file(job, self.known)
                except FileExistsError:       # taken by what this layer did not make
                    self._remove(rel, path)
                    write_file(job, self.known)
                return
            if self._writers is None:
                self._writers = Writers(self.known, self.budget)
            self._writers.add(rel, job, member.size)
            return
        if self.budget is not None and kind != REG:      # a file: in _write_file
            self.budget.take_entry(lambda: f"archive member {quote(member.name)}")
        self._made.add(rel)
        try:
            self._create(tar, member, path)
        except FileExistsError:
            # A path named again (by an earlier member of this tar): make room,
            # as tar does.  Tried after the creation fails, not before each one:
            # an lstat per member is 3 % of an import.
            self._settle()
            self._remove(rel, path)
            self._create(tar, member, path)

    def _create(self, tar: TarReader, member: Member, path: str) -> None:
        """Create the non-directory member at path; FileExistsError if something is there."""
        kind = member.type
        if kind == REG:
            self._write_file(tar, member, path)
            return
        if kind == SYM:
            os.symlink(member.linkname, path)
        elif kind == LNK:
            self._link(member, path)
            return        # a hard link shares its target's inode and attributes
        else:
            mode = stat.S_IFCHR if kind == CHR else stat.S_IFBLK if kind == BLK else stat.S_IFIFO
            os.mknod(path, mode | 0o600, os.makedev(member.devmajor, member.devminor))
        self._set_attrs(path, member)

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
            if self._pending(sub):
                self._settle()
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

    def _make_dir(self, rel: str, path: str, member: Member) -> None:
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
        self._meta[rel] = _DirMeta(member.mode, member.uid, member.gid, member.mtime_ns)
        self._set_xattrs(path, member_xattrs(member))

    def _whiteout(self, parent: str, name: str, member: str) -> None:
        rel = f"{parent}/{name}" if parent else name
        if not name or name in (".", "..") or "/" in name:
            raise HostileArchive(f"archive member {quote(member)} is a malformed whiteout")
        path = self._path(rel)
        if self._pending(rel):
            self._settle()
        if os.path.lexists(path):
            return    # a whiteout hides lower layers only, never its own layer's entry
        if self.budget is not None:
            self.budget.take_entry(lambda: f"archive member {quote(member)}")
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self._made.add(rel)

    def _remove(self, rel: str, path: str) -> None:
        """Make room for a member, as tar does when a later member names a path again."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            import shutil     # here: only an archive that replaces a directory needs it
            self._forget_tree(path)
            shutil.rmtree(path)
            prefix = rel + "/"
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(prefix)}
            for key in [k for k in self._meta if k == rel or k.startswith(prefix)]:
                del self._meta[key]
            self._opaque = {d for d in self._opaque if d != rel and not d.startswith(prefix)}
        else:
            os.unlink(path)
            self.known.removed(st.st_ino)

    def _forget_tree(self, path: str) -> None:
        """What a directory about to be removed holds is no longer known: its
        inode numbers may come back for other files."""
        todo = [path]
        while todo:
            with os.scandir(todo.pop()) as listing:
                for one in listing:
                    if one.is_dir(follow_symlinks=False):
                        todo.append(one.path)
                    else:
                        self.known.removed(one.inode())

    def _write_file(self, tar: TarReader, member: Member, path: str) -> None:
        """Create, fill and set up a regular file through one descriptor: its data
        hashed as it is written (for the content manifest), then the rest
        (filewriters.set_up)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     create_mode(member.mode))   # FileExistsError before the budget is charged
        try:
            if self.budget is not None:
                self.budget.take(member.size, lambda: f"archive member {quote(member.name)}",
                                 inodes=1)
            sha256 = None
            if member.sparse is not None:
                # Only the data, at its offsets; the file's length makes the holes.
                # Not hashed here: content.build reads it (holes read as zeros).
                for offset, size in member.sparse:
                    tar.copy_at(size, fd, offset)
                os.ftruncate(fd, member.realsize)
            else:
                digest = hashlib.sha256()
                tar.copy(member.size, fd, digest)
                sha256 = digest.hexdigest()
            set_up(fd, path, member.uid, member.gid, member.mode, member.mtime_ns,
                   member_xattrs(member) if member.xattrs else None, self.known, sha256)
        finally:
            os.close(fd)

    def _link(self, member: Member, path: str) -> None:
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
        self.known.linked(st.st_ino)      # its link count is no longer what was read

    def _set_attrs(self, path: str, member: Member) -> None:
        """Owner, xattrs, mode and times of what is not a regular file, by path."""
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if member.xattrs:
            self._set_xattrs(path, member_xattrs(member))
        if member.type != SYM:
            os.chmod(path, member.mode)   # after chown, which clears setuid
        os.utime(path, ns=(member.mtime_ns, member.mtime_ns), follow_symlinks=False)

    _set_xattrs = staticmethod(set_xattrs)

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


def unpack_layer(stream: io.BufferedIOBase, root: str, lowers: Sequence[str] = (),
                 before_finish: Callable[[], None] | None = None,
                 budget: SpaceBudget | None = None,
                 written: Callable[[], None] | None = None) -> Written:
    """Unpack a layer tar into root; returns what it knows of the files it wrote,
    for their content manifest (content.build)."""
    unpacker = Unpacker(root, lowers, before_finish=before_finish, budget=budget,
                        written=written)
    try:
        # Decompressed and hashed ahead, on the other core (prefetch.py).
        with Prefetched(stream) as ahead:
            unpacker.unpack(ahead)  # type: ignore[arg-type]
        return unpacker.known
    except OSError as e:
        raise BadLayer(f"cannot unpack into {quote(e.filename or root)}: {e.strerror}") from None
    except (ValueError, OverflowError) as e:      # a directory's owner or time, set last
        raise BadLayer(f"the layer has an impossible value ({e}); refusing it") from None
