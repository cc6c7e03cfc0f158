"""import-image NAME DIR: a plain directory tree (a chroot, a build tree) as one
layer, with what `tar -C DIR -c . | stacko import-image NAME -` would keep:
owners, modes, times, xattrs, hard links, symlinks, devices and fifos.

File data is cloned where the filesystem shares extents (FICLONE: btrfs, XFS,
bcachefs…), copied in the kernel otherwise (copy_file_range, then sendfile),
and only read and written by us as a last resort.

What a layer tar would not carry is not copied either: sockets, and the
``trusted.overlay.*`` xattrs, which describe one overlayfs mount (see
layertar).  Like ``tar --one-file-system``, the copy does not cross into other
filesystems mounted inside DIR (a chroot's /proc or /dev): their mount points
become empty directories and are named on stderr.

The tree may belong to someone else, who may change it while it is read: it
is walked by descriptors (see treewalk), so a directory swapped for a
symlink is never followed, a file swapped for a FIFO never blocks the import,
and trees deeper than PATH_MAX import, as tar archives them.  Everything is
written under a fresh staging directory that only root can reach.  DIR itself
may be a symlink (as with ``tar -C DIR``); it must not be the state root nor
lie inside it (checked by device and inode, walking up from DIR), and the state
root inside DIR is left out.

Before a byte is written, the tree is measured (a walk by the same rules as
the copy) and the import refused when it does not fit in the free space or the
free inodes of the root's filesystem, as an archive import is: filling the disk
that holds /var/lib would hurt every service on the host, not only the import.
An entry counts an inode, a directory, symlink or device a block more, and a
regular file what the copy will allocate: its size rounded up to whole blocks
(the copy writes the holes of a sparse file), or its allocated blocks where
that is more; a hard-linked inode once.  The copy charges the same budget
again as it goes (the tree may have grown since it was measured), and copies
at most the size a file had when it was opened: a file whose size or mtime
changed during its copy is an error.  Where the data is cloned (a reflink
shares it), the copy needs next to no space: when one clone succeeds, the
check of the bytes up front is skipped, and only what is copied rather than
cloned is charged.
"""
from __future__ import annotations

import errno
import os
import stat

from stacko import words
from stacko.errors import UsageError
from stacko.formats.spacebudget import BLOCK, SPARE_INODES, NoSpace, SpaceBudget
from stacko.formats.spellings import OVERLAY_XATTR_PREFIX
from stacko.formats.treewalk import (OPEN_DIR, OPEN_FILE, OPEN_NODE, BadSource, Frame, Walker,
                                     identity, open_beneath, proc_fd)
from stacko.log import log

__all__ = ["copy_tree", "BadSource"]

FICLONE = 0x40049409            # _IOW(0x94, 9, int), linux/fs.h
CHUNK = 1 << 30                 # per copy_file_range/sendfile call
READ_CHUNK = 1 << 20
NO_CLONE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS,
            errno.EPERM, errno.EBADF, errno.ETXTBSY)


def copy_tree(source: str, target: str, state_root: str = "") -> None:
    """Copy the tree at source into target (an empty directory we made).  The
    state root, should it lie inside source, is left out: the copy would chase
    its own staging directory, which grows as it is copied."""
    try:
        top_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise BadSource(f"cannot read {source}: {e.strerror}") from None
    try:
        top = os.fstat(top_fd)
        own = own_directories(state_root, target)
        refuse_state_root(top_fd, source, state_root, own)
        copier = Copier(source, target, top.st_dev, own)
        copier.fit(top_fd, top, state_root or target)
        copier.walk(top_fd, top)
    finally:
        os.close(top_fd)
    if copier.left_out_at:
        log(f"stacko: {source}: the stacko state root inside it, {copier.left_out_at}, "
                "was not imported (its directory is empty)")
    if copier.skipped_mounts:
        shown = copier.skipped_mounts[:5]
        if len(copier.skipped_mounts) > 5:
            shown.append(f"{len(copier.skipped_mounts) - 5} more")
        log(f"stacko: {source}: other filesystems mounted inside were not imported "
                f"(their mount points are empty): {words.join(shown)}")


def own_directories(state_root: str, target: str) -> dict[tuple[int, int], str]:
    """(device, inode) of the state root and of the staging directory."""
    own = {}
    for path, what in ((target, "staging"), (state_root, "root")):
        if path:
            try:
                own[identity(os.stat(path))] = what
            except OSError:
                pass
    return own


def refuse_state_root(top_fd: int, source: str, state_root: str,
                      own: dict[tuple[int, int], str]) -> None:
    """Refuse a DIR that is the state root or lies inside it: its copy would copy
    its own staging directory.  Compared by device and inode from DIR up to /,
    through "..", so a symlink or a bind mount on the way hides nothing."""
    fd = os.dup(top_fd)
    try:
        st = os.fstat(fd)
        first = True
        while True:
            if identity(st) in own:
                where = ("the stacko state root" if first and own[identity(st)] == "root"
                         else f"inside the stacko state root {state_root!r}")
                raise UsageError(f"cannot import {source!r}: it is {where}, and a copy of it "
                                 "would hold the copy being made",
                                 hint="import a directory outside the state root")
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            parent = os.fstat(fd)
            if identity(parent) == identity(st):
                return                              # "/": its ".." is itself
            st, first = parent, False
    except OSError as e:
        raise BadSource(f"cannot read the directories above {source}: {e.strerror}") from None
    finally:
        os.close(fd)


class Measure(Walker):
    """(bytes the copy allocates, inodes it takes, a small non-empty regular file
    to try a clone with) of what the copy walks: same device, not the state root."""

    def __init__(self, source: str, device: int, own: dict[tuple[int, int], str]) -> None:
        super().__init__(source, device, own)
        self.need, self.inodes = 0, 0
        self.seen: set[tuple[int, int]] = set()
        self.sample: list[str] = []
        self.sample_size = 0

    def begin(self, frame: Frame) -> None:
        self.need, self.inodes = self.need + BLOCK, self.inodes + 1

    def stub(self, frame: Frame, name: str, st: os.stat_result, why: str) -> None:
        self.need, self.inodes = self.need + BLOCK, self.inodes + 1

    def entry(self, frame: Frame, name: str, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                if identity(st) in self.seen:
                    return
                self.seen.add(identity(st))
            self.inodes += 1
            self.need += max(-(-st.st_size // BLOCK) * BLOCK, st.st_blocks * 512)
            if st.st_size and (not self.sample or st.st_size < self.sample_size):
                self.sample, self.sample_size = frame.names() + [name], st.st_size
        elif not stat.S_ISSOCK(st.st_mode):
            self.need, self.inodes = self.need + BLOCK, self.inodes + 1


class Copier(Walker):
    def __init__(self, source: str, target: str, device: int,
                 own: dict[tuple[int, int], str]) -> None:
        super().__init__(source, device, own)
        self.target = target
        self.links: dict[tuple[int, int], list[str]] = {}   # (dev, ino) -> its first copy
        self.skipped_mounts: list[str] = []
        self.left_out_at = ""
        self.clone = True           # until the filesystem says it cannot
        self.kernel_copy = True
        self.budget: SpaceBudget | None = None

    def fit(self, top_fd: int, top: os.stat_result, root: str) -> None:
        """Refuse (NoSpace) a tree that does not fit on the target's filesystem,
        before anything is written; then budget the copy."""
        from stacko.words import human
        measure = Measure(self.source, self.device, self.own)
        measure.walk(top_fd, top)
        need, inodes = measure.need, measure.inodes
        st = os.statvfs(self.target)
        free = st.f_bavail * st.f_frsize
        hint = ("free some space (`stacko df` shows what can be reclaimed), or use a root "
                "on a larger filesystem")
        if st.f_files and inodes > st.f_favail - SPARE_INODES:     # 0 files: no limit (btrfs)
            raise NoSpace(f"{self.source} does not fit on the filesystem of {root}: it has "
                          f"{inodes} files and directories, {st.f_favail} inodes are free",
                          hint=hint)
        if need > free and not (measure.sample and self.clones(top_fd, measure.sample)):
            raise NoSpace(f"{self.source} does not fit in the free space of the filesystem "
                          f"of {root}: its files need {need} bytes ({human(need)}), "
                          f"{free} ({human(free)}) are free", hint=hint)
        self.budget = SpaceBudget(self.target, what=self.source)

    def clones(self, top_fd: int, sample: list[str]) -> bool:
        """Whether the filesystem clones the sample file into the target (then the
        data of the copy is shared, and takes no space); remembered for the copy."""
        import fcntl
        try:
            fd_in = open_beneath(top_fd, sample, OPEN_FILE)
        except OSError:
            return False                # gone since: no clone to count on
        try:
            if not stat.S_ISREG(os.fstat(fd_in).st_mode):
                return False
            probe = os.path.join(self.target, ".clone-probe")
            fd_out = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(fd_out, FICLONE, fd_in)
                return True
            except OSError as e:
                if e.errno not in NO_CLONE:
                    raise
                self.clone = False
                return False
            finally:
                os.close(fd_out)
                os.unlink(probe)
        finally:
            os.close(fd_in)

    def charge(self, size: int) -> None:
        if self.budget is not None:
            self.budget.take(size, repr(self.where()), inodes=1)

    # --- directories ---
    def begin(self, frame: Frame) -> None:
        if frame.parent is None:
            frame.dst = os.open(self.target, OPEN_DIR)
            return
        self.charge(BLOCK)
        os.mkdir(frame.name, 0o700, dir_fd=frame.parent.dst)
        frame.dst = os.open(frame.name, OPEN_DIR, dir_fd=frame.parent.dst)

    def leave(self, frame: Frame) -> None:
        self.attrs(frame.fd, frame.dst, frame.st)

    def stub(self, frame: Frame, name: str, st: os.stat_result, why: str) -> None:
        """An empty directory with the attributes listed (not its xattrs: it is not
        opened, which could trigger an automount)."""
        if why == "mount":
            self.skipped_mounts.append(self.where())
        elif why == "root":
            self.left_out_at = self.where()
        self.charge(BLOCK)
        os.mkdir(name, 0o700, dir_fd=frame.dst)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=frame.dst, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=frame.dst)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=frame.dst,
                 follow_symlinks=False)

    # --- other entries ---
    def entry(self, frame: Frame, name: str, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            self.copy_file(frame, name, st)
        elif not stat.S_ISSOCK(st.st_mode):     # a socket belongs to a process, not an image
            self.copy_node(frame, name, st)

    def copy_file(self, frame: Frame, name: str, listed: os.stat_result) -> None:
        key = identity(listed)
        if listed.st_nlink > 1 and key in self.links:
            self.link(self.links[key], frame, name)
            return      # one inode: its attributes are set once
        fd_in = self.open(frame.fd, name, OPEN_FILE, "regular file")
        try:
            st = os.fstat(fd_in)
            self.same(st, listed, "it is no longer the regular file that was listed")
            self.charge(0)
            fd_out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=frame.dst)
            try:
                self.copy_data(fd_in, fd_out, st.st_size)
                after = os.fstat(fd_in)
                if after.st_size != st.st_size:
                    raise self.changed(f"its size went from {st.st_size} to {after.st_size} "
                                       "bytes while it was copied")
                if after.st_mtime_ns != st.st_mtime_ns:
                    raise self.changed("it was written to while it was copied")
                self.attrs(fd_in, fd_out, st)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        if listed.st_nlink > 1:
            self.links[key] = frame.names() + [name]

    def link(self, first: list[str], frame: Frame, name: str) -> None:
        """A hard link to the first copy of the inode, found in the target by names."""
        if first[:-1] == frame.names():
            os.link(first[-1], name, src_dir_fd=frame.dst, dst_dir_fd=frame.dst,
                    follow_symlinks=False)
            return
        top = os.open(self.target, OPEN_DIR)
        try:
            where = open_beneath(top, first[:-1] + ["."], OPEN_DIR)
        finally:
            os.close(top)
        try:
            os.link(first[-1], name, src_dir_fd=where, dst_dir_fd=frame.dst,
                    follow_symlinks=False)
        finally:
            os.close(where)

    def copy_node(self, frame: Frame, name: str, listed: os.stat_result) -> None:
        """A symlink, a device or a fifo: opened with O_PATH (never for I/O, which
        could block on a fifo or act on a device), checked, and made again."""
        kind = "symlink" if stat.S_ISLNK(listed.st_mode) else \
            "fifo" if stat.S_ISFIFO(listed.st_mode) else "device"
        src = self.open(frame.fd, name, OPEN_NODE, kind)
        try:
            st = os.fstat(src)
            self.same(st, listed, "something else took its place")
            self.charge(BLOCK)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink("", dir_fd=src), name, dir_fd=frame.dst)
            else:
                os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=frame.dst)
            dst = os.open(name, OPEN_NODE, dir_fd=frame.dst)
            try:
                # chown clears setuid bits and file capabilities (security.capability):
                # owner first, then the xattrs, then the mode, as layertar does.
                os.chown(name, st.st_uid, st.st_gid, dir_fd=frame.dst, follow_symlinks=False)
                self.xattrs(proc_fd(src), proc_fd(dst))
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=frame.dst)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=frame.dst,
                         follow_symlinks=False)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def copy_data(self, fd_in: int, fd_out: int, size: int) -> None:
        """Copy size bytes, no more: what the budget was charged.  Fewer (the file
        shrank) is an error; more is found by the caller's fstat."""
        if size == 0:
            return
        if self.clone:
            import fcntl
            try:
                fcntl.ioctl(fd_out, FICLONE, fd_in)
                return
            except OSError as e:
                if e.errno not in NO_CLONE:
                    raise
                self.clone = False          # not on this filesystem (pair): stop asking
        if self.budget is not None:
            self.budget.take(size, repr(self.where()))    # a copy, not a clone: it takes space
        left = size
        if self.kernel_copy:
            try:
                while left:
                    n = os.copy_file_range(fd_in, fd_out, min(CHUNK, left))
                    if n == 0:
                        break
                    left -= n
            except OSError as e:
                if e.errno not in NO_CLONE or left != size:
                    raise
                self.kernel_copy = False
        if not self.kernel_copy:
            left = self.send(fd_in, fd_out, left)
        if left:
            raise self.changed(f"it shrank from {size} bytes while it was copied")

    @staticmethod
    def send(fd_in: int, fd_out: int, left: int) -> int:
        size = left
        while left:      # sendfile to a regular file: Linux 2.6.33 and later
            try:
                n = os.sendfile(fd_out, fd_in, None, min(CHUNK, left))
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS) or left != size:
                    raise
                break
            if n == 0:
                return left
            left -= n
        while left:
            data = os.read(fd_in, min(READ_CHUNK, left))
            if not data:
                return left
            left -= len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view):]
        return left

    @staticmethod
    def xattrs(src: int | str, dst: int | str) -> None:
        """Copy the xattrs (but an overlay mount's) from src to dst: descriptors,
        or the /proc/self/fd paths of O_PATH ones."""
        try:
            names = os.listxattr(src)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        for name in sorted(names):
            if name.startswith(OVERLAY_XATTR_PREFIX):
                continue            # one overlay mount's bookkeeping, not the file's
            try:
                value = os.getxattr(src, name)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue        # removed since it was listed
                raise
            os.setxattr(dst, name, value)

    def attrs(self, src: int, dst: int, st: os.stat_result) -> None:
        # chown clears setuid bits and file capabilities (security.capability):
        # owner first, then the xattrs, then the mode, as layertar does.
        os.chown(dst, st.st_uid, st.st_gid)
        self.xattrs(src, dst)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
