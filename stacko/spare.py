"""The spare: room kept for the metadata, so that a full disk can be emptied.

On a filesystem filled to the last block, `delete-image` must still work, and
it has to record first that the image is gone (images.json, written to a
temporary file and renamed) before its layer may go: the record that forgets
a layer is durable before its data is removed (state.py).  That write needs
blocks the disk does not have.  The filesystem's reserve for root does not
help: ext4 has one, and stacko runs as root, so the disk is filled through it
as well; xfs, btrfs and tmpfs have none.

So every root keeps a spare, ``ROOT/.stacko-spare``: a file of allocated,
unwritten blocks (fallocate), 1 MiB plus the size of the larger metadata
file.  When a metadata write fails for want of space and it *forgets layers
and names no new one* (a deletion, whose command goes on to remove their
data), the new file is written into the spare's own blocks instead, and the
spare is renamed over the metadata file: no block is asked of the disk, and
no other writer filling the disk can take the room between a release and a
retry.  Any other write (one that adds, or an edit-image that only unseals)
fails as before: the spare is kept for the deletion that will follow.  At the
end of every command that changed state, ``ensure`` makes the spare again,
or grows it, as far as the free space allows.

The spare needs no fsync: lost in a power cut, it is made again by the next
command.  It is not data: `stacko df` does not count it, `check` leaves it.
"""
from __future__ import annotations

import os
import stat

NAME = ".stacko-spare"
BASE = 1 << 20                  # bytes, besides the larger metadata file
CHUNK = 64 << 10                # what a nearly full disk is asked for at a time
METADATA = ("images.json", "stackpoints.json")


def path_of(root: str) -> str:
    return os.path.join(root, NAME)


def wanted(root: str) -> int:
    largest = 0
    for name in METADATA:
        try:
            largest = max(largest, os.lstat(os.path.join(root, name)).st_size)
        except OSError:
            pass
    return BASE + (largest + CHUNK - 1) // CHUNK * CHUNK


def ensure(root: str) -> None:
    """Make the spare, or grow it, to its wanted size or as far as the free
    space allows; quietly: a spare that cannot be made now is made later."""
    want = wanted(root)
    try:   # the common case, in one system call: the spare is there, whole
        st = os.lstat(path_of(root))
        if stat.S_ISREG(st.st_mode) and st.st_blocks * 512 >= want:
            return
    except OSError:
        pass
    try:
        fd = os.open(path_of(root), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 >= want:
            return
        try:
            os.posix_fallocate(fd, 0, want)
        except OSError:
            # A nearly full disk: take what there is, a chunk at a time.
            have = st.st_blocks * 512 // CHUNK * CHUNK
            while have < want:
                try:
                    os.posix_fallocate(fd, have, CHUNK)
                except OSError:
                    break
                have += CHUNK
    finally:
        os.close(fd)


def layers_named(value: object) -> set[str]:
    """Every layer id a metadata file's records name (their "layer" fields)."""
    found: set[str] = set()
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            layer = item.get("layer")
            if isinstance(layer, str):
                found.add(layer)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return found


def forgets_layers(old: object, new: object) -> bool:
    """Whether a write of new over old forgets some layer and names none that
    old did not: a removal, whose command goes on to remove the data."""
    before, after = layers_named(old), layers_named(new)
    return bool(before - after) and after <= before


def write_instead(root: str, path: str, data: bytes, mode: int) -> bool:
    """Put data at path by writing it into the spare's blocks and renaming the
    spare over path (fsync'd as state.atomic_write does); False when there is
    no spare large enough, and path is then unchanged."""
    spare = path_of(root)
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 < len(data) + CHUNK:
            return False
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(fd, view[written:], written)
        os.ftruncate(fd, len(data))     # gives the rest of the spare back
        os.fchmod(fd, mode)
        os.fsync(fd)
    except OSError:
        return False     # the spare is spoilt for this; ensure() makes it again
    finally:
        os.close(fd)
    os.replace(spare, path)
    return True
