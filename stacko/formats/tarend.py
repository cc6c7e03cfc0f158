"""What may follow a layer tar's end-of-archive: a bounded run of zeros.

A tar ends with two 512-byte blocks of zeros.  Writers pad after them to
their record size: GNU tar, bsdtar and Python's tarfile to 10 KiB records (20
blocks), larger with a larger blocking factor; Go's archive/tar (docker,
podman, containerd, skopeo) writes the two blocks alone.  Whatever follows is
no part of the layer, but it is part of the blob and of its diff_id, so it was
decompressed and hashed to its end, however long: half a megabyte of zstd
after the end of a layer cost 15 s of CPU before the diff_id refused it.  So
at most ``LIMIT`` bytes may follow the last member, and they must all be
zeros; more, or anything else (a second archive appended, a corrupt header
that tarfile takes for the end), and the layer is refused.
"""
from __future__ import annotations

import collections
import io

LIMIT = 1 << 20        # 1 MiB: a 2048-block record, more than any writer pads
KEEP = 32 << 10        # more than tarfile reads ahead (one 10 KiB record)
CHUNK = 64 << 10


class TarEnd:
    """Reads through to tarfile, keeping the last reads (references, no copies),
    so that what it read beyond the end of the archive can be looked at."""

    __slots__ = ("source", "count", "recent", "kept")

    def __init__(self, source: io.BufferedIOBase) -> None:
        self.source = source
        self.count = 0
        self.recent: collections.deque[bytes] = collections.deque()
        self.kept = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data:
            self.count += len(data)
            self.recent.append(data)
            self.kept += len(data)
            while self.kept - len(self.recent[0]) >= KEEP:
                self.kept -= len(self.recent.popleft())
        return data

    def problem(self, end: int) -> str | None:
        """Why the data after offset end (where tarfile saw the end of the
        archive) is refused, having read it to its end; None when it is padding."""
        after = self.count - end
        if after > self.kept:       # cannot happen: tarfile reads ahead one record
            return "the layer's end-of-archive cannot be told"
        kept = b"".join(self.recent)
        seen = kept[len(kept) - after:] if after else b""
        if seen.count(0) != len(seen):
            return ("data that is not a tar member follows the layer's end-of-archive "
                    "(or a member's header is corrupt)")
        while True:
            data = self.source.read(min(CHUNK, LIMIT + 1 - after))
            if not data:
                return None
            after += len(data)
            if data.count(0) != len(data):
                return "data follows the layer's end-of-archive"
            if after > LIMIT:
                return (f"more than {LIMIT >> 20} MiB of padding follows the layer's "
                        "end-of-archive")
