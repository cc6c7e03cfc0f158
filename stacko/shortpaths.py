"""Paths under a directory that stay usable beyond PATH_MAX (content.build)."""
from __future__ import annotations

import os

LONG = 3072     # bytes of path beyond which a layer's paths are made short


class ShortPaths:
    """The paths of a layer, usable even where they are longer than PATH_MAX
    (tar archives such trees, and import-image copies them): a long one is
    given as /proc/self/fd/N/NAME, N a descriptor of its directory, opened one
    name at a time and kept until close()."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def get(self, rel: str) -> str:
        path = os.path.join(self.root, rel) if rel else self.root
        if len(path) < LONG:
            return path
        parent, _, name = rel.rpartition("/")
        return f"/proc/self/fd/{self.dir_fd(parent)}/{name}"

    def dir_fd(self, rel: str) -> int:
        missing = []
        while rel not in self.fds and len(os.path.join(self.root, rel)) >= LONG:
            rel, _, name = rel.rpartition("/")
            missing.append(name)
        fd = self.fds.get(rel)
        if fd is None:
            fd = self.fds[rel] = os.open(os.path.join(self.root, rel), OPEN_DIR)
        for name in reversed(missing):
            rel = f"{rel}/{name}"
            fd = self.fds[rel] = os.open(name, OPEN_DIR, dir_fd=fd)
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    __del__ = close


OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
