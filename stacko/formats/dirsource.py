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

The tree is read with lstat and O_NOFOLLOW: a symlink in DIR is copied as a
symlink and never followed.  Everything is written under a fresh staging
directory that only root can reach.

Before a byte is written, the tree is measured (a walk of lstat calls, by the
same rules as the copy) and the import refused when it does not fit in the
free space or the free inodes of the root's filesystem, as an archive import
is: filling the disk that holds /var/lib would hurt every service on the host,
not only the import.  A regular file counts for what the copy will allocate:
its size rounded up to whole blocks (the copy writes the holes of a sparse
file), or its allocated blocks where that is more; a hard-linked inode once.
Where the data is cloned (a reflink shares it), the copy needs next to no
space: when one clone succeeds, the check up front is skipped, and the copy
charges each file that it copies rather than clones to the same budget.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat

from stacko import run, words
from stacko.errors import StackoError
from stacko.formats.layertar import BLOCK, OVERLAY_XATTR_PREFIX, NoSpace, SpaceBudget

FICLONE = 0x40049409            # _IOW(0x94, 9, int), linux/fs.h
CHUNK = 1 << 30                 # per copy_file_range/sendfile call
NO_CLONE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS,
            errno.EPERM, errno.EBADF, errno.ETXTBSY)


class BadSource(StackoError):
    """The directory cannot be read as a whole."""


def copy_tree(source: str, target: str, state_root: str = "") -> None:
    """Copy the tree at source into target (an empty directory we made).  The
    state root, should it lie inside source, is left out: the copy would chase
    its own staging directory, which grows as it is copied."""
    try:
        top = os.stat(source)     # DIR itself may be a symlink: as `tar -C DIR` goes into it
    except OSError as e:
        raise BadSource(f"cannot read {source}: {e.strerror}") from None
    copier = Copier(source, target, top.st_dev)
    if state_root:
        with contextlib.suppress(OSError):
            st = os.stat(state_root)
            copier.left_out = (st.st_dev, st.st_ino)
    try:
        copier.fit(top, state_root or target)
        copier.run(top)
    except OSError as e:
        where = e.filename or source
        raise BadSource(f"cannot import {source}: {where}: {e.strerror or e}") from None
    if copier.left_out_at:
        run.log(f"stacko: {source}: the stacko state root inside it, {copier.left_out_at}, "
                "was not imported (its directory is empty)")
    if copier.skipped_mounts:
        shown = copier.skipped_mounts[:5]
        if len(copier.skipped_mounts) > 5:
            shown.append(f"{len(copier.skipped_mounts) - 5} more")
        run.log(f"stacko: {source}: other filesystems mounted inside were not imported "
                f"(their mount points are empty): {words.join(shown)}")


class Copier:
    def __init__(self, source: str, target: str, device: int) -> None:
        self.source, self.target, self.device = source, target, device
        self.links: dict[tuple[int, int], str] = {}      # (dev, ino) -> target path
        self.skipped_mounts: list[str] = []
        self.left_out: tuple[int, int] | None = None     # (dev, ino) of the state root
        self.left_out_at = ""
        self.clone = True           # until the filesystem says it cannot
        self.kernel_copy = True
        self.budget: SpaceBudget | None = None

    def fit(self, top: os.stat_result, root: str) -> None:
        """Refuse (NoSpace) a tree that does not fit on the target's filesystem,
        before anything is written; then budget the copy."""
        from stacko.df import human
        need, inodes, sample = self.measure(top)
        st = os.statvfs(self.target)
        free = st.f_bavail * st.f_frsize
        hint = ("free some space (`stacko df` shows what can be reclaimed), or use a root "
                "on a larger filesystem")
        if st.f_files and inodes > st.f_favail:      # 0 files: no inode limit (btrfs)
            raise NoSpace(f"{self.source} does not fit on the filesystem of {root}: it has "
                          f"{inodes} files and directories, {st.f_favail} inodes are free",
                          hint=hint)
        if need > free and not (sample and self.clones(sample)):
            raise NoSpace(f"{self.source} does not fit in the free space of the filesystem "
                          f"of {root}: its files need {need} bytes ({human(need)}), "
                          f"{free} ({human(free)}) are free", hint=hint)
        self.budget = SpaceBudget(self.target, what=self.source)

    def measure(self, top: os.stat_result) -> tuple[int, int, str]:
        """(bytes the copy allocates, inodes it takes, the smallest non-empty
        regular file) of what run() copies: same device, not the state root."""
        need, inodes, seen = 0, 1, set()
        sample, sample_size = "", 0
        todo = [self.source]
        while todo:
            directory = todo.pop()
            with os.scandir(directory) as it:
                names = [e.name for e in it]
            for name in names:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    inodes += 1
                    if st.st_dev == self.device and (st.st_dev, st.st_ino) != self.left_out:
                        todo.append(path)
                elif stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    inodes += 1
                    need += max(-(-st.st_size // BLOCK) * BLOCK, st.st_blocks * 512)
                    if st.st_size and (not sample or st.st_size < sample_size):
                        sample, sample_size = path, st.st_size
                elif not stat.S_ISSOCK(st.st_mode):
                    inodes += 1
        return need, inodes, sample

    def clones(self, src: str) -> bool:
        """Whether the filesystem clones src into the target (then the data of the
        copy is shared, and takes no space); remembered for the copy."""
        import fcntl
        probe = os.path.join(self.target, ".clone-probe")
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        try:
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

    def run(self, top: os.stat_result) -> None:
        # Pre-order, iteratively (a tree may be deeper than Python recurses);
        # directories get their times last, after their entries are written.
        dirs: list[tuple[str, str, os.stat_result]] = [(self.source, self.target, top)]
        todo: list[tuple[str, str]] = [(self.source, self.target)]
        while todo:
            src_dir, dst_dir = todo.pop()
            with os.scandir(src_dir) as it:
                names = sorted(e.name for e in it)
            for name in names:
                src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
                st = os.lstat(src)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(dst, 0o700)
                    dirs.append((src, dst, st))
                    if st.st_dev != self.device:
                        self.skipped_mounts.append(src)
                    elif (st.st_dev, st.st_ino) == self.left_out:
                        self.left_out_at = src
                    else:
                        todo.append((src, dst))
                else:
                    self.entry(src, dst, st)
        for src, dst, st in reversed(dirs):      # children before their parents
            self.attrs(src, dst, st)

    def entry(self, src: str, dst: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], dst, follow_symlinks=False)
                return      # one inode: its attributes are set once
            self.copy_file(src, dst, st)
            if st.st_nlink > 1:
                self.links[key] = dst
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        else:
            return          # sockets belong to a running process, not to an image
        self.attrs(src, dst, st)

    def copy_file(self, src: str, dst: str, st: os.stat_result) -> None:
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            try:
                self.copy_data(fd_in, fd_out, st.st_size, dst)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)

    def copy_data(self, fd_in: int, fd_out: int, size: int, dst: str) -> None:
        if size == 0:
            return
        if self.clone:
            import fcntl
            try:
                fcntl.ioctl(fd_out, FICLONE, fd_in)
                return
            except OSError as e:
                if e.errno not in NO_CLONE:
                    raise OSError(e.errno, e.strerror, dst) from None
                self.clone = False          # not on this filesystem (pair): stop asking
        if self.budget is not None:
            self.budget.take(size, dst)     # a copy, not a clone: it takes space
        copied = 0
        if self.kernel_copy:
            try:
                while True:
                    n = os.copy_file_range(fd_in, fd_out, CHUNK)
                    if n == 0:
                        return
                    copied += n
            except OSError as e:
                if e.errno not in NO_CLONE or copied:
                    raise OSError(e.errno, e.strerror, dst) from None
                self.kernel_copy = False
        while True:      # sendfile to a regular file: Linux 2.6.33 and later
            try:
                n = os.sendfile(fd_out, fd_in, None, CHUNK)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS) or copied:
                    raise OSError(e.errno, e.strerror, dst) from None
                break
            if n == 0:
                return
            copied += n
        while True:
            data = os.read(fd_in, 1 << 20)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view):]

    @staticmethod
    def xattrs(src: str, dst: str) -> None:
        try:
            names = os.listxattr(src, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        for name in sorted(names):
            if name.startswith(OVERLAY_XATTR_PREFIX):
                continue            # one overlay mount's bookkeeping, not the file's
            try:
                value = os.getxattr(src, name, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue        # removed since it was listed
                raise
            os.setxattr(dst, name, value, follow_symlinks=False)

    def attrs(self, src: str, dst: str, st: os.stat_result) -> None:
        # chown clears setuid bits and file capabilities (security.capability):
        # owner first, then the xattrs, then the mode, as layertar does.
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        self.xattrs(src, dst)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
