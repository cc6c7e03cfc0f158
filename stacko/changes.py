"""Day-two upkeep of a stackpoint: diff, commit and prune its instances.

An instance's layer is an overlayfs upper directory, so its changes can be read
from it alone, mounted or not:

* a character device 0/0 is a *whiteout*: the path was deleted;
* a directory with ``trusted.overlay.opaque=y`` *replaced* whatever directory
  was below it (``rm -rf d && mkdir d``): nothing below shows through;
* anything else was added, or changed (copied up, then written or chmod'ed).

Mounts use ``index=off,metacopy=off,redirect_dir=off`` (see overlay.py), so the
upper never holds redirects or metadata-only copies that only its own stack
could resolve, and a committed upper is a valid lower layer anywhere.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat

from stacko import images as images_mod
from stacko import content, events, guard, overlay, pending, procs, stackpoints
from stacko.errors import (AlreadyExists, StackoError, StackpointBusy, StackTooDeep)
from stacko.layers import remove_layer
from stacko.log import log
from stacko.names import check_name
from stacko.records import Image, Instance, Stackpoint, record, replace
from stacko.state import Store, locked, remove_tree

OPAQUE = "trusted.overlay.opaque"
PRIVATE_PREFIX = "trusted.overlay."
# Markers that say what the layer means, and must survive a commit: opaque
# directories, and the xattr form of whiteouts that kernels since 6.7 read in
# lower layers (an empty file with trusted.overlay.whiteout, in a directory
# marked trusted.overlay.whiteouts or opaque=x).  Every other trusted.overlay.*
# attribute (origin, impure, redirect, nlink, uuid, protattr …) ties the upper
# to the mount that wrote it and is removed.
KEPT_XATTRS = frozenset({OPAQUE, "trusted.overlay.whiteout", "trusted.overlay.whiteouts"})
METACOPY = "trusted.overlay.metacopy"

TYPE_CHECKING = False
if TYPE_CHECKING:   # an alias for annotations only
    Change = tuple[str, str]      # ("A" | "C" | "D", "/path")


# --- reading a layer ------------------------------------------------------------------
def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    # Only "y" means opaque: kernels since 6.7 write "x" on a directory that merely
    # holds xattr whiteouts.  Unprivileged readers never see trusted.* (ENODATA).
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


@record
class Below:
    """What the lower stack shows at one path: its entry, and if it is a directory
    the lower directories that merge into it, top first."""
    st: os.stat_result | None = None
    dirs: tuple[str, ...] = ()


def look_below(dirs: tuple[str, ...], name: str) -> Below:
    """Overlayfs' lookup of name in the merged directory made of dirs."""
    found: os.stat_result | None = None
    merged: list[str] = []
    for d in dirs:
        path = os.path.join(d, name)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if found is None:
            if is_whiteout(st):
                return Below()
            found = st
            if not stat.S_ISDIR(st.st_mode):
                return Below(st)
        elif not stat.S_ISDIR(st.st_mode):
            break              # a file or whiteout under a directory ends the merge
        merged.append(path)
        if is_opaque(path):
            break
    return Below(found, tuple(merged))


def names_below(dirs: tuple[str, ...]) -> list[str]:
    """The entries a merged lower directory shows."""
    names: set[str] = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            names.update(os.listdir(d))
    return sorted(n for n in names if look_below(dirs, n).st is not None)


def same_metadata(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == \
        (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns)


class _Walk:
    """An explicit stack rather than recursion: a layer may nest deeper than
    Python's recursion limit (paths of thousands of levels are legal)."""

    def __init__(self) -> None:
        self.changes: dict[str, str] = {}
        self.touched: set[str] = set()       # dirs with an A or D right in them
        # Directories present below and above, decided once their entries are known.
        self.pending: list[tuple[str, os.stat_result, os.stat_result, bool]] = []

    def add(self, kind: str, path: str) -> None:
        self.changes.setdefault(path, kind)
        if kind != "C":
            self.touched.add(path.rsplit("/", 1)[0])

    def run(self, upper: str, lowers: tuple[str, ...]) -> None:
        todo: list[tuple[str, str, tuple[str, ...], bool]] = [(upper, "", lowers, True)]
        while todo:
            self.directory(*todo.pop(), todo)
        for path, st, old, shows in self.pending:
            if path in self.touched or not shows or not same_metadata(st, old):
                self.add("C", path)

    def directory(self, upper: str, rel: str, below: tuple[str, ...], through: bool,
                  todo: list[tuple[str, str, tuple[str, ...], bool]]) -> None:
        """Record the changes right in one upper directory and queue its subdirectories.
        below: the lower directories that made it before; through: whether they still
        show through it now (False under an opaque or replaced directory)."""
        seen: set[str] = set()
        try:
            entries = sorted(os.scandir(upper), key=lambda e: e.name)
        except OSError as e:
            raise StackoError(f"cannot read {upper}: {e.strerror}") from None
        for entry in entries:
            seen.add(entry.name)
            path = f"{rel}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise StackoError(f"cannot read {entry.path}: {e.strerror}") from None
            old = look_below(below, entry.name) if below else Below()
            if is_whiteout(st):
                if old.st is not None:     # a whiteout over nothing is a leftover, no change
                    self.add("D", path)
                continue
            if old.st is None:
                self.add("A", path)
            elif not stat.S_ISDIR(st.st_mode) or not stat.S_ISDIR(old.st.st_mode):
                self.add("C", path)
            if stat.S_ISDIR(st.st_mode):
                shows = through and not is_opaque(entry.path) and bool(old.dirs)
                todo.append((entry.path, path, old.dirs, shows))
                if old.st is not None and stat.S_ISDIR(old.st.st_mode):
                    self.pending.append((path, st, old.st, shows))
        if not through and below:
            # Replaced: what the lower directories held and the upper lacks is gone.
            for name in names_below(below):
                if name not in seen:
                    self.add("D", f"{rel}/{name}")


def layer_changes(upper: str, lowers: list[str]) -> list[Change]:
    """What the upper directory changes on top of lowers (top first), sorted by path."""
    walk = _Walk()
    walk.run(upper, tuple(lowers))
    return [(walk.changes[p], show_path(p)) for p in sorted(walk.changes)]


def show_path(path: str) -> str:
    """One path on one line: backslash, control characters and bytes that are not
    UTF-8 are written as escapes (as `ls -b` does)."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for ch in path:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":           # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


# --- diff ------------------------------------------------------------------------------
@locked(exclusive=False)
def diff(store: Store, name: str) -> list[Change]:
    images = store.load_images()
    point = stackpoints.get(store.load_stackpoints(), name)
    inst = point.current_instance()
    lowers = [store.layer_path(i.layer) for i in images_mod.stack_of(images, inst.image)]
    if os.geteuid() != 0:
        log("stacko: warning: not root: opaque directories (trusted.overlay.opaque) "
            "cannot be seen, so replaced directories show as changed ones")
    return layer_changes(store.layer_path(inst.layer), lowers)


# --- commit ----------------------------------------------------------------------------
def strip_private_xattrs(layer: str) -> int:
    """Remove the kernel's private trusted.overlay.* attributes from a former upper
    directory so that it can serve as a lower layer anywhere; returns how many.

    The cost is one listxattr per entry, whatever the size of the files."""
    removed = 0
    todo = [layer]              # iterative: os.walk recurses, and layers may nest deeply
    while todo:
        directory = todo.pop()
        removed += _strip_one(directory)
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            raise StackoError(f"cannot read {directory}: {e.strerror}") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
            else:
                removed += _strip_one(entry.path)
    return removed


def _strip_one(path: str) -> int:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):     # no xattrs here at all
            return 0
        raise StackoError(f"cannot list the attributes of {path}: {e.strerror}") from None
    removed = 0
    for attr in names:
        if not attr.startswith(PRIVATE_PREFIX) or attr in KEPT_XATTRS:
            continue
        if attr == METACOPY:
            # A metadata-only copy has its data in a lower layer of this stack only.
            raise StackoError(f"{path} is a metadata-only copy ({METACOPY}); it cannot be "
                              "committed", hint="the layer was mounted with metacopy=on, "
                              "which stacko never does")
        try:
            os.removexattr(path, attr, follow_symlinks=False)
        except OSError as e:
            raise StackoError(f"cannot remove {attr} from {path}: {e.strerror}") from None
        removed += 1
    return removed


@locked(exclusive=True)
def commit(store: Store, name: str, new_image: str) -> Image:
    """Make the current instance's layer the layer of a new image stacked on the
    current image, and leave the stackpoint on a fresh, empty instance of it.

    The layer is not copied, nor even renamed: it stays at l/<id> and only changes
    owner in the metadata, so the cost does not depend on the amount of data (one
    listxattr per file to strip the kernel's private attributes, and the mounts).

    The instance that was current leaves the stackpoint: its layer is now the
    image's, so it can no longer be switched to or fall back on, and it is not put
    on the history.  The stackpoint's files are the same as before the commit, so
    its history stays as it was: fallback goes where it went before.

    Order, and what a crash after each step leaves (the exclusive lock is held):
      1. fresh layer F for the new instance      -> an unlisted empty layer
      2. unmount the stackpoint if mounted       -> the old state, unmounted
      3. strip private xattrs from the layer X   -> harmless: they are only caches
      4. images.json: NEWIMAGE with layer X      -> X is both NEWIMAGE's layer and the
         current instance's: an interrupted commit, lossless either way; `check`
         finishes it (interrupted_commits() names it)
      5. stackpoints.json: instance F of NEWIMAGE current, the old instance gone
                                                 -> the new state, unmounted
      6. mount F if the stackpoint was mounted.
    images.json goes first because nothing may name an image that is not recorded,
    and a layer must never be left unnamed by both files: check --repair removes
    unlisted layers.  A failure before the end puts everything back as it was.
    """
    from stacko import switch, tentative     # here: diff-stackpoint does without them
    check_name(new_image, "image name")
    images = store.load_images()
    points = store.load_stackpoints()
    point = stackpoints.get(points, name)
    pending.refuse_if_checking(point, "commit-stackpoint")
    pending.refuse_if_interrupted(point, "commit-stackpoint")
    tentative.refuse_if_tentative(point, "commit-stackpoint")
    if new_image in images:
        raise AlreadyExists(f"image {new_image!r} exists already")
    old = point.current_instance()
    depth = len(images_mod.stack_of(images, old.image)) + 1
    if depth > overlay.MAX_LAYERS:
        raise StackTooDeep(f"cannot commit stackpoint {name!r} as {new_image!r}: its stack "
                           f"would have {depth} layers, and overlayfs mounts at most "
                           f"{overlay.MAX_LAYERS}")
    directory = guard.checked_dir(store, point)
    mounted = guard.mounted_instance(store, point)
    if mounted is not None and mounted != old:
        raise StackpointBusy(
            f"stackpoint {name!r} has its instance of {mounted.image!r} mounted, "
            f"but its current instance is of {point.current!r}",
            hint=f"run `stacko umount-stackpoint {name}` first")
    # Root even when unmounted: trusted.* attributes are invisible to other users,
    # so they could neither be stripped nor the opaque markers be trusted.
    overlay.require_root("commit-stackpoint")
    if mounted is not None:
        users = procs.holders(directory)
        if users:
            raise StackpointBusy(
                f"cannot commit stackpoint {name!r}: {directory} is busy: "
                + overlay.busy_reason(directory),
                hint="stop those processes first; the stackpoint is remounted afterwards")

    # A mount of this instance left detached by a gapless switch and still held
    # would keep writing the layer once it is an image's: refuse, as mounting does.
    point = guard._refuse_if_held(store, point, old.image, "commit-stackpoint")

    # The committed image runs as its parent did (Cmd, Env, …), like new-image's children.
    image = Image(name=new_image, layer=old.layer, parent=old.image, created=images_mod.now(),
                  settings=images[old.image].settings if old.image in images else None)
    fresh = Instance(image=new_image, layer=store.new_layer(), created=images_mod.now())
    committed = replace(point.without_instance(old.image).with_instance(fresh),
                        current=new_image)
    committed = events.add(committed, "commit", old.image, new_image, "commit-stackpoint")
    with contextlib.ExitStack() as undo:
        undo.callback(remove_layer, store, fresh.layer)
        if mounted is not None:
            overlay.umount(directory)       # busy after all (a race): MountBusy, nothing changed
            undo.callback(switch._mount, store, images, point, old)
        strip_private_xattrs(store.layer_path(old.layer))
        # Sealed: its manifest, and the instance's data made durable (syncfs)
        # before images.json names it.  Hashing reads the data once.
        undo.callback(content.remove, store.root, old.layer)
        image = images_mod.seal(store, image)
        new_images = {**images, new_image: image}
        store.save_images(new_images)
        undo.callback(store.save_images, images)
        store.save_stackpoints({**points, name: committed})
        undo.callback(store.save_stackpoints, points)
        if mounted is not None:
            switch._mount(store, new_images, committed, fresh)
        undo.pop_all()
    _empty_workdir(store, old.layer)
    return image


def _empty_workdir(store: Store, layer: str) -> None:
    """The instance's workdir is now the image's (edit-image uses it): leave it empty
    as a new image's is.  Leftovers would be harmless, so failures are ignored."""
    work = store.work_path(layer)
    with contextlib.suppress(OSError):
        for entry in os.listdir(work):
            remove_tree(os.path.join(work, entry))


def interrupted_commits(images: dict[str, Image],
                        points: dict[str, Stackpoint]) -> list[tuple[str, str, str]]:
    """(stackpoint, image, layer) for every layer that is at once an image's and a
    stackpoint's current instance's: a commit stopped between its two metadata
    writes.  Finishing it means making a fresh instance of the image current."""
    by_layer = {i.layer: i.name for i in images.values()}
    found = []
    for point in points.values():
        for inst in point.instances:
            if inst.layer in by_layer:
                found.append((point.name, by_layer[inst.layer], inst.layer))
    return sorted(found)


# --- prune -----------------------------------------------------------------------------
@locked(exclusive=True)
def prune(store: Store, name: str, keep: int) -> list[str]:
    """Delete the instances of the oldest history entries beyond the keep most recent;
    returns their images.  Never the current instance, nor one that was never current
    (made by new-stackpoint-instance, waiting for a cutover)."""
    if keep < 0:
        raise StackoError(f"--keep must be 0 or more, not {keep}")
    from stacko import tentative
    points = stackpoints.undo_if_interrupted(store, store.load_stackpoints(), name,
                                             "prune-stackpoint")
    point = stackpoints.get(points, name)
    pending.refuse_if_checking(point, "prune-stackpoint")
    doomed = list(point.history[:len(point.history) - keep]) if keep else list(point.history)
    if not doomed:
        return []
    tentative.refuse_if_tentative(point, "prune-stackpoint", deleting=doomed[-1])
    mounted = guard.mounted_instance(store, point)
    if mounted is not None and mounted.image in doomed:
        raise StackpointBusy(f"the instance of {mounted.image!r} is mounted at "
                             f"{store.stackpoint_dir(point)}",
                             hint=f"run `stacko umount-stackpoint {name}` first")
    for image in doomed:
        # An instance whose mount a gapless switch detached may still be written
        # by the processes that hold it: its data must stay.
        point = guard._refuse_if_held(store, point, image, "prune-stackpoint")
    pruned = point
    for image in doomed:
        pruned = pruned.without_instance(image)
    # Forget first, then delete: a crash leaves unlisted layers (check removes them),
    # never a listed instance without its data.
    store.save_stackpoints({**points, name: pruned})
    for image in doomed:
        inst = point.instance(image)
        if inst is not None:
            remove_layer(store, inst.layer)
        log(f"stacko: pruned the instance of {image!r} from stackpoint {name!r}")
    return doomed

