"""How much an import may still write: the free space and inodes of the
filesystem, charged member by member before each is made (layertar, dirsource).
"""
from __future__ import annotations

import os

from stacko.errors import StackoError

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable


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
