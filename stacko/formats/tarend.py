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
that looks like the end), and the layer is refused.
"""
from __future__ import annotations

LIMIT = 1 << 20        # 1 MiB: a 2048-block record, more than any writer pads
CHUNK = 64 << 10


def tail_problem(seen: bytes, source: object, after: int) -> str | None:
    """Why what follows the end of the archive is refused, having read it to its
    end (or past LIMIT); None when it is padding.  seen: the bytes already read
    past the end's first zero block; after: the bytes from the start of that
    block to the end of seen."""
    if seen.count(0) != len(seen):
        return ("data that is not a tar member follows the layer's end-of-archive "
                "(or a member's header is corrupt)")
    while True:
        if after > LIMIT:
            return (f"more than {LIMIT >> 20} MiB of padding follows the layer's "
                    "end-of-archive")
        data = source.read(min(CHUNK, LIMIT + 1 - after))  # type: ignore[attr-defined]
        if not data:
            return None
        after += len(data)
        if data.count(0) != len(data):
            return "data follows the layer's end-of-archive"
