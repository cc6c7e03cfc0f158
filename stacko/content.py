"""Content manifests: what an image's layer holds, path by path, recorded when
the image is sealed (new-image, close-image, import-image, commit-stackpoint)
so that verify-image and check --content can find what changed since.

A manifest maps each path of the layer ("/" for its root, "/etc/passwd" …) to
an entry:

    {"type": "file", "mode": 420, "uid": 0, "gid": 0, "size": 12, "sha256": "…"}

``type`` is dir, file, symlink (with ``target``), char or block (with
``rdev`` [major, minor]), fifo, socket or whiteout (overlayfs's character
device 0/0: a path deleted from the layers below; a whiteout has no other
field).  A directory that hides the layers below (trusted.overlay.opaque=y)
has ``"opaque": true``.  ``xattrs`` holds the extended attributes, their
values in hex.  Every ``trusted.overlay.*`` xattr that the kernel honours in a
lower layer is content and recorded there (redirect, metacopy, whiteout, an
opaque that is not "y", the escaped ``trusted.overlay.overlay.*`` of nested
overlays, and any this module does not know); only the bookkeeping the kernel
writes into an *upper* layer and reads from an upper layer alone is left out
(UPPER_ONLY: a sealed layer is never an upper layer, and the layer's uuid would
give every image made through edit-image a digest of its own).  A file, symlink
or device with more than one link has ``"links": N`` (st_nlink, whiteouts
excepted: overlayfs shares one whiteout inode between many) and, when other
paths of the layer name the same inode, ``"link"``: the first of them, sorted.
Times are left out: they change with every repacking and say nothing about the
content.

Version 2 added the overlay xattrs and the links.  Content without either has
the same entries, and so the same digest, in both versions.  A version-1
manifest is compared as version 1 recorded it, except that any overlay xattr
honoured by the kernel is reported as a change: no stacko ever wrote one into
a layer it sealed.

Its digest, the sha256 of its entries as canonical JSON, is the content's
identity: two layers with the same digest hold the same files whatever tar
they came from.  The manifest is kept in ``<root>/m/<layer id>.json``.
"""
from __future__ import annotations

import json
import os
import stat

from stacko.errors import StackoError
from stacko.formats.spellings import OPAQUE_XATTR, OVERLAY_XATTR_PREFIX
from stacko.shortpaths import ShortPaths

VERSION = 2
# trusted.overlay.* that the kernel writes into an upper layer and reads only
# from an upper layer (fs/overlayfs: uuid of the upper root, impure dirs,
# copy-up origins, the index's nlink and upper, the immutable/append flags of
# copied-up files): not content of a sealed layer, which is only ever a lower.
UPPER_ONLY = frozenset(OVERLAY_XATTR_PREFIX + n for n in
                       ("uuid", "impure", "origin", "nlink", "upper", "protattr"))
CHUNK = 1 << 20


class ManifestMissing(StackoError):
    """An image has no content manifest, or its manifest cannot be read."""


class Manifest:
    """The entries of one layer, with their digest and the layer's size."""

    def __init__(self, entries: dict[str, dict], size: int | None = None) -> None:
        self.entries = entries
        self.size = size if size is not None else _size_of(entries)
        self._text = _entries_json(entries)
        self.digest = _digest_of_text(self._text)

    def to_json(self) -> bytes:
        # The entries as the digest hashed them, dumped once: the keys in the
        # order sort_keys gives them (digest, entries, size, version).
        return (f'{{"digest":{json.dumps(self.digest)},"entries":{self._text},'
                f'"size":{json.dumps(self.size)},"version":{VERSION}}}\n').encode("ascii")


def _entries_json(entries: dict[str, dict]) -> str:
    # ensure_ascii: a file name that is not UTF-8 (surrogateescape) is escaped,
    # never an encoding error.
    return json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest_of_text(text: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def digest_of(entries: dict[str, dict]) -> str:
    return _digest_of_text(_entries_json(entries))


def _size_of(entries: dict[str, dict]) -> int:
    return sum(e.get("size", 0) for e in entries.values())


# --- building ----------------------------------------------------------------------
def hash_file(path: str) -> str:
    """sha256 of a file's data, read in large blocks (hashlib releases the GIL
    while it hashes them, so several files hash in parallel)."""
    import hashlib
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            fd = -1
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    finally:
        if fd >= 0:
            os.close(fd)
    return h.hexdigest()


def xattrs_of(path: str | int) -> dict[str, str]:
    """The xattrs of path (never followed if a symlink), or of a descriptor."""
    follow = isinstance(path, int)       # a descriptor: nothing to follow
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return {}
    found = {}
    for name in names:
        if name in UPPER_ONLY:
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=follow)
        except OSError:
            continue
        if name == OPAQUE_XATTR and value == b"y":
            continue                # "opaque": true (see entry_of)
        found[name] = value.hex()
    return found


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def entry_of(path: str, st: os.stat_result) -> dict:
    """The entry of one path, without the sha256 of a file's data."""
    mode = st.st_mode
    if stat.S_ISCHR(mode) and st.st_rdev == 0:
        return {"type": "whiteout"}
    entry: dict = {"mode": stat.S_IMODE(mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISREG(mode):
        entry.update(type="file", size=st.st_size)
    elif stat.S_ISDIR(mode):
        entry["type"] = "dir"
        if is_opaque(path):
            entry["opaque"] = True
    elif stat.S_ISLNK(mode):
        entry.update(type="symlink", target=os.readlink(path))
        del entry["mode"]          # a symlink's mode means nothing on Linux
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.update(type="char" if stat.S_ISCHR(mode) else "block",
                     rdev=[os.major(st.st_rdev), os.minor(st.st_rdev)])
    elif stat.S_ISFIFO(mode):
        entry["type"] = "fifo"
    else:
        entry["type"] = "socket"
    xattrs = xattrs_of(path)
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def show(rel: str) -> str:
    return "/" + rel


class Written:
    """What an unpacker knows of the regular files it wrote, by inode, so that
    build() need not look at them again: the sha256 of their data, hashed as
    it was written, and, for those it could read back through the descriptor
    that wrote them once everything was set (fstat, flistxattr: whatever the
    kernel added, such as a security label, included), their whole entry and
    the bytes they hold.  The unpacker says when one gains a name (a hard
    link: its link count changes) or loses one (removed: its inode number may
    come back for another file)."""

    __slots__ = ("hashes", "entries")

    def __init__(self) -> None:
        self.hashes: dict[int, str] = {}
        self.entries: dict[int, tuple[dict, int]] = {}

    def add(self, fd: int, sha256: str, st: os.stat_result | None = None) -> None:
        """A regular file just written and set up through fd; st: its fstat, when
        nothing but its times changed since."""
        if st is None:
            st = os.fstat(fd)
        entry = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                 "type": "file", "size": st.st_size, "sha256": sha256}
        xattrs = xattrs_of(fd)
        if xattrs:
            entry["xattrs"] = xattrs
        self.hashes[st.st_ino] = sha256
        if st.st_nlink == 1:
            self.entries[st.st_ino] = (entry, st.st_blocks * 512)

    def linked(self, ino: int) -> None:
        self.entries.pop(ino, None)

    def removed(self, ino: int) -> None:
        self.hashes.pop(ino, None)
        self.entries.pop(ino, None)


def build(root: str, known: Written | None = None, workers: int = 0,
          tolerant: bool = False) -> Manifest:
    """The manifest of the layer directory root.

    known: the files whose data was hashed as it was written (import-image
    hashes while it unpacks): those are not read again, and those whose entry
    is known are only listed (by their directory's scandir, which gives the
    inode and type of every name without a stat).  The other files are read
    and hashed by a few threads at once.  tolerant (verifying): a file that
    cannot be read (EIO on a damaged disk) gets "unreadable: why" for its
    sha256, a difference, instead of an error."""
    entries: dict[str, dict] = {}
    to_hash: dict[int, list[str]] = {}     # inode -> the paths that name it
    linked: dict[int, list[str]] = {}      # inode -> its paths, for nlink > 1
    first_path: dict[int, str] = {}
    sizes: dict[int, int] = {}
    allocated: dict[int, int] = {}         # inode -> bytes of the blocks it holds
    hashes = known.hashes if known is not None else {}
    made = known.entries if known is not None else {}
    used: dict[int, str] = {}              # inode -> the path that took its known entry
    spoilt: set[int] = set()               # named twice after all: looked at as any other
    todo = [""]
    paths = ShortPaths(root)
    while todo:           # iterative: a layer may nest deeper than recursion allows
        rel = todo.pop()
        path = paths.get(rel)
        try:
            st = os.lstat(path)
            allocated[st.st_ino] = st.st_blocks * 512
            entry = entry_of(path, st)
        except OSError as e:
            raise StackoError(f"cannot read {os.path.join(root, rel)}: {e.strerror}") from None
        entries[show(rel)] = entry
        if st.st_nlink > 1 and entry["type"] not in ("dir", "whiteout"):
            entry["links"] = st.st_nlink
            linked.setdefault(st.st_ino, []).append(show(rel))
        if entry["type"] == "dir":
            try:
                with os.scandir(path) as listing:
                    names = list(listing)
            except OSError as e:
                raise StackoError(f"cannot read {os.path.join(root, rel)}: "
                                  f"{e.strerror}") from None
            for listed in names:
                sub = f"{rel}/{listed.name}" if rel else listed.name
                ino = listed.inode()
                if ino in made and ino not in spoilt and listed.is_file(follow_symlinks=False):
                    first = used.get(ino)
                    if first is None:
                        used[ino] = sub
                        entries[show(sub)], allocated[ino] = made[ino]
                        continue
                    spoilt.add(ino)
                    todo.append(first)
                todo.append(sub)
        elif entry["type"] == "file":
            sizes[st.st_ino] = st.st_size
            if st.st_ino in hashes:
                entry["sha256"] = hashes[st.st_ino]
            else:
                to_hash.setdefault(st.st_ino, []).append(show(rel))
                first_path.setdefault(st.st_ino, path)
    if to_hash:
        for ino, digest in _hash_all(first_path, sizes, workers, tolerant):
            for shown in to_hash[ino]:
                entries[shown]["sha256"] = digest
    paths.close()
    for group in linked.values():
        if len(group) > 1:
            first = min(group)
            for one in group:
                entries[one]["link"] = first
    # The size is what the layer takes on the disk, as du counts it: the blocks
    # of every inode, each once (hard links share theirs).  Not the files'
    # lengths: a sparse file of 200 GiB may hold 20 KiB (stacko df, df.py).
    return Manifest(entries, size=sum(allocated.values()))


BIG = 256 << 10     # files at least this large are hashed by the thread pool


def _hash_all(paths: dict[int, str], sizes: dict[int, int], workers: int,
              tolerant: bool) -> list[tuple[int, str]]:
    """Hash every file: the large ones on a few threads (hashlib releases the
    GIL), the small ones right here meanwhile, where a thread pool's hand-off
    would cost more than the hashing (10,000 tiny files: 0.55 s, not 0.9 s)."""
    def one(item: tuple[int, str]) -> tuple[int, str]:
        try:
            return item[0], hash_file(item[1])
        except OSError as e:
            if tolerant:
                return item[0], f"unreadable: {e.strerror}"
            raise StackoError(f"cannot read {item[1]}: {e.strerror}") from None

    big = [i for i in paths.items() if sizes.get(i[0], 0) >= BIG]
    small = [i for i in paths.items() if sizes.get(i[0], 0) < BIG]
    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    if len(big) < 2 or workers < 2:
        return [one(i) for i in big + small]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = pool.map(one, big)
        done = [one(i) for i in small]
        return done + list(pending)


# --- comparing ----------------------------------------------------------------------
class Recorded(dict):
    """The entries of a recorded manifest, with the version it was written in."""
    version = VERSION


def compare(recorded: dict[str, dict], actual: dict[str, dict]) -> list[tuple[str, str]]:
    """(kind, path) for every difference, sorted by path: M changed, - missing, + extra.
    actual is built by this version; recorded may be of an earlier one (Recorded)."""
    old_version = getattr(recorded, "version", VERSION)
    found = []
    for path in sorted(set(recorded) | set(actual)):
        old, new = recorded.get(path), actual.get(path)
        if old is None:
            found.append(("+", path))
        elif new is None:
            found.append(("-", path))
        elif old != (new if old_version >= 2 else as_version_1(new)):
            found.append(("M", path))
    return found


def as_version_1(entry: dict) -> dict | None:
    """The entry as version 1 recorded it, or None (a difference in any case)
    when it carries an overlay xattr that the kernel honours: version 1 left
    them out, and no stacko ever wrote one into a layer it sealed."""
    xattrs = entry.get("xattrs", {})
    if any(name.startswith(OVERLAY_XATTR_PREFIX) for name in xattrs):
        return None
    if "links" not in entry:
        return entry
    return {k: v for k, v in entry.items() if k not in ("links", "link")}


# --- storing ------------------------------------------------------------------------
def manifest_dir(root: str) -> str:
    return os.path.join(root, "m")


def manifest_path(root: str, layer: str) -> str:
    return os.path.join(manifest_dir(root), f"{layer}.json")


def save(root: str, layer: str, manifest: Manifest, fsync: bool = True) -> None:
    """Write the manifest atomically.  With fsync=False the caller syncs the
    filesystem (durable.sync_filesystem) before it records the image, which
    makes this file durable together with the layer's data."""
    from stacko.state import atomic_write
    directory = manifest_dir(root)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise StackoError(f"cannot create {directory}: {e.strerror}") from None
    else:
        # Made now (the root's first sealed image): its entry in the root is
        # durable before a record names a manifest in it.
        from stacko import durable
        durable.sync_new_dirs(directory)
    if not atomic_write(manifest_path(root, layer), manifest.to_json(), fsync=fsync):
        # The image is recorded next, naming this manifest: not before it is durable.
        raise StackoError(f"cannot sync {directory}: the content manifest of layer {layer} "
                          "may not survive a power cut", hint="check the disk (dmesg)")


def load(root: str, layer: str, digest: str) -> dict[str, dict]:
    """The entries of a recorded manifest, checked against the digest the image
    record holds (so a damaged manifest is not taken for damaged content)."""
    path = manifest_path(root, layer)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        entries = data["entries"]
        version = data.get("version", 1)
    except FileNotFoundError:
        raise ManifestMissing(f"its content manifest {path} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestMissing(f"its content manifest {path} cannot be read: "
                              f"{getattr(e, 'strerror', None) or e}") from None
    if not isinstance(entries, dict) or digest_of(entries) != digest:
        raise ManifestMissing(f"its content manifest {path} does not match the digest "
                              f"recorded in images.json ({digest}): the manifest is damaged")
    if not isinstance(version, int) or version > VERSION:
        raise ManifestMissing(f"its content manifest {path} has version {version!r}, newer "
                              f"than this stacko understands ({VERSION})", hint="upgrade stacko")
    found = Recorded(entries)
    found.version = version
    return found


def remove(root: str, layer: str) -> None:
    try:
        os.unlink(manifest_path(root, layer))
    except FileNotFoundError:
        pass
