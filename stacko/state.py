"""The files under the state root: metadata JSON, layer directories, the lock.

Layout of a root::

    lock               flock: exclusive for changes, shared for listings
    images.json        {"version": 1, "images": {...}}
    stackpoints.json   {"version": 1, "stackpoints": {...}}
    l/ID               layer data of an image or an instance (ID: 5 characters)
    w/ID               overlayfs workdir beside that layer (same filesystem)
    e/                 an empty directory, the second lower of one-layer read-only mounts
    edit/NAME          where edit-image mounts an image
    stackpoints/NAME   default stackpoint directories
    tmp/               staging for imports and exports: import-PID-X, export-PID-X
    .stacko-root       marks a stacko root: stacko cleans up only in a marked root
    .stacko-spare      allocated room for the record of a deletion on a full disk (spare.py)

Layer directories get short names because overlayfs takes its options in one
page (4096 bytes) of mount data: a stack too deep for absolute paths is
mounted from inside ``l/`` with relative names, six bytes a layer, so 500
layers fit whatever the root path (overlay.page_options).
"""
from __future__ import annotations

import os
import sys

from stacko.errors import CorruptState, NoSpace, StackoError, os_error
from stacko.lean import dump_json, parse_json, wraps
from stacko.records import Image, Stackpoint
from stacko.rootlock import MARKER, RootLock, permission_hint, q

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

    Operation = Callable[..., object]     # a store operation; its first argument is the Store

VERSION = 1
DEFAULT_ROOT = "/var/lib/stacko"
LAYER_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
LAYER_ID_LEN = 5
# The only names stacko ever makes in <root>/tmp, and so the only ones it removes.


def is_staging_name(name: str) -> bool:
    """Whether name is one stacko gives its staging directories in tmp:
    (import|export)-DIGITS-ALNUM (without `re`: see names.is_name)."""
    kind, _, rest = name.partition("-")
    number, _, tag = rest.partition("-")
    return (kind in ("import", "export") and number.isascii() and number.isdigit()
            and tag.isascii() and tag.isalnum())


class Store(RootLock):
    """Owns everything under one state root."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.layers_dir = os.path.join(self.root, "l")
        self.work_dir = os.path.join(self.root, "w")
        self.empty_dir = os.path.join(self.root, "e")
        self.edit_dir = os.path.join(self.root, "edit")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.images_file = os.path.join(self.root, "images.json")
        self.stackpoints_file = os.path.join(self.root, "stackpoints.json")
        self._lock_fd: int | None = None
        self._exclusive = False
        # Directories whose fsync failed after a metadata file was renamed there
        # (atomic_write only warns): layers.remove_layer syncs them before removing data.
        self._unsynced: set[str] = set()

    # --- paths -------------------------------------------------------------
    def layer_path(self, layer: str) -> str:
        return os.path.join(self.layers_dir, layer)

    def work_path(self, layer: str) -> str:
        return os.path.join(self.work_dir, layer)

    def edit_path(self, image: str) -> str:
        return os.path.join(self.edit_dir, image)

    def stackpoint_dir(self, point: Stackpoint) -> str:
        return point.path or os.path.join(self.root, "stackpoints", point.name)

    def update_lock_path(self, point_name: str) -> str:
        """The lock of update-stackpoint POINT; delete-stackpoint removes it."""
        return os.path.join(self.tmp_dir, f"update-{point_name}.lock")


    def staging_entries(self) -> list[str]:
        """The leftovers stacko may remove from <root>/tmp: only names it makes, and
        only in a marked root."""
        if not os.path.isfile(os.path.join(self.root, MARKER)):
            return []
        try:
            names = os.listdir(self.tmp_dir)
        except OSError:
            return []
        return sorted(n for n in names if is_staging_name(n))

    # --- metadata ----------------------------------------------------------
    # Every record is validated as it is read (validate.py).  A violation makes
    # loading fail with CorruptState naming the file, record and field, for every
    # command that changes or mounts anything; listings and `check` pass
    # strict=False and get the records as they are: they only show them, and
    # check reports each violation (and then touches nothing).
    def load_images(self, strict: bool = True) -> dict[str, Image]:
        from stacko import validate
        data = self._read(self.images_file, "images")
        images = {}
        for name, raw in data.items():
            image = Image.from_dict(raw, self.images_file)
            if image.name != name:
                raise CorruptState(f"{self.images_file}: record {name!r} names {image.name!r}")
            images[name] = image
        if strict:
            refuse_violations(validate.image_violations(images, self.images_file))
        return images

    def save_images(self, images: dict[str, Image]) -> None:
        self._write(self.images_file, "images",
                    {name: images[name].to_dict() for name in sorted(images)})

    def load_stackpoints(self, strict: bool = True) -> dict[str, Stackpoint]:
        from stacko import validate
        data = self._read(self.stackpoints_file, "stackpoints")
        points = {}
        for name, raw in data.items():
            point = Stackpoint.from_dict(raw, self.stackpoints_file)
            if point.name != name:
                raise CorruptState(f"{self.stackpoints_file}: record {name!r} names {point.name!r}")
            points[name] = point
        if strict:
            refuse_violations(validate.stackpoint_violations(points, self.stackpoints_file,
                                                             self.root))
        return points

    def violations(self) -> list[str]:
        """Every record that would be refused, one message each (for check)."""
        from stacko import validate
        images = self.load_images(strict=False)
        points = self.load_stackpoints(strict=False)
        return (validate.image_violations(images, self.images_file)
                + validate.stackpoint_violations(points, self.stackpoints_file, self.root)
                + validate.shared_layers(images, points, self.images_file,
                                         self.stackpoints_file))

    def layer_owner(self, layer: str) -> str:
        """What record names layer ("" when none does)."""
        for image in self.load_images(strict=False).values():
            if image.layer == layer:
                return f"image {image.name!r}"
        for point in self.load_stackpoints(strict=False).values():
            for inst in point.instances:
                if inst.layer == layer:
                    return f"the instance of {inst.image!r} of stackpoint {point.name!r}"
        return ""

    def save_stackpoints(self, points: dict[str, Stackpoint]) -> None:
        self._write(self.stackpoints_file, "stackpoints",
                    {name: points[name].to_dict() for name in sorted(points)})

    def _read(self, path: str, key: str) -> dict[str, object]:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        except PermissionError:
            raise StackoError(f"permission denied: cannot read {q(path)}",
                              hint=permission_hint(path)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise CorruptState(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        try:
            data = parse_json(text)
        except RecursionError:
            raise CorruptState(f"{path} is corrupt: nested too deeply",
                               hint="restore it from a backup; stacko left it as it is") from None
        except ValueError as e:
            raise CorruptState(f"{path} is corrupt: {e}",
                               hint="restore it from a backup; stacko left it as it is") from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise CorruptState(f"{path} is corrupt: no \"version\" field",
                               hint="restore it from a backup; stacko left it as it is")
        if data["version"] > VERSION:
            raise CorruptState(f"{path} has version {data['version']}, newer than this "
                               f"stacko understands ({VERSION})", hint="upgrade stacko")
        records = data.get(key, {})
        if not isinstance(records, dict):
            raise CorruptState(f"{path} is corrupt: {key!r} is not an object")
        return records

    def _write(self, path: str, key: str, records: dict[str, object]) -> None:
        assert self._exclusive, "metadata written without the exclusive lock"
        # json.dumps(…, indent=2, sort_keys=True), without json (and re, enum):
        # an update-stackpoint that finds nothing new writes its check (docs/bench.md).
        text = dump_json({"version": VERSION, key: records}) + "\n"
        try:
            synced = atomic_write(path, text.encode("utf-8"))
        except NoSpace:
            # A full disk: a deletion may still record itself, in the spare's
            # blocks (spare.py), so that its data can go and free the disk.
            from stacko import spare
            if not spare.forgets_layers(self._read(path, key), records) or \
                    not spare.write_instead(self.root, path, text.encode("utf-8"),
                                            kept_mode(path)):
                raise
            synced = sync_directory(path)
        if not synced:
            self._unsynced.add(os.path.dirname(path))

    # --- layers ------------------------------------------------------------
    def new_layer(self) -> str:
        """Create an empty layer and its workdir; returns the layer's id."""
        # os.urandom, not secrets (which imports hashlib and random: docs/startup.md).
        # 256 is not a multiple of 36, so some characters come a little more often:
        # harmless, an id only has to be free, and a taken one is drawn again.
        from stacko import durable
        for _ in range(100):
            layer = "".join(LAYER_ID_CHARS[b % len(LAYER_ID_CHARS)]
                            for b in os.urandom(LAYER_ID_LEN))
            try:
                os.mkdir(self.layer_path(layer), 0o755)
            except FileExistsError:
                continue
            except OSError as e:
                raise os_error(e, self.root, f"cannot make a layer in {q(self.layers_dir)}") \
                    from None
            try:
                try:
                    os.mkdir(self.work_path(layer), 0o700)
                except OSError as e:
                    raise os_error(e, self.root, f"cannot make a workdir in {q(self.work_dir)}") \
                        from None
                # Durable before any record names them (a new instance is
                # recorded right after); two fsyncs, not a syncfs, so that a
                # busy filesystem does not slow a cutover down.
                durable.sync_new_dirs(self.layer_path(layer), self.work_path(layer))
            except BaseException:
                try:
                    os.rmdir(self.work_path(layer))
                except OSError:
                    pass
                os.rmdir(self.layer_path(layer))
                raise
            return layer
        raise StackoError(f"cannot find a free layer name in {self.layers_dir}")

    def sync_records(self, refusal: str, hint: str) -> None:
        """Make the metadata written so far durable where an fsync failed after
        its rename (atomic_write only warns), before a step that relies on it:
        else raise, saying what is not done (refusal) and what to do (hint)."""
        from stacko import durable
        for directory in sorted(self._unsynced):
            try:
                durable.fsync_path(directory)
            except OSError as e:
                raise StackoError(f"cannot sync {directory}: {e.strerror}; {refusal}",
                                  hint=f"check the disk (dmesg); {hint}") from None
            self._unsynced.discard(directory)


def refuse_violations(found: list[str]) -> None:
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" \
            if len(found) > 1 else ""
        raise CorruptState(f"{found[0]}{more}",
                           hint="stacko acts on no record it cannot trust: fix it by hand, or "
                                "restore the file from a backup; `stacko check` lists them all")


def remove_tree(path: str) -> None:
    """rm -rf, which never crosses into another filesystem and, unlike
    shutil.rmtree, does not recurse once per level (layers may be deep)."""
    from stacko import run
    from stacko.errors import CommandFailed
    if os.path.lexists(path):
        try:
            run.run(["rm", "-rf", "--one-file-system", "--", path])
        except CommandFailed:
            # Another remover got there first (the rm of a killed stacko goes on
            # after it, and entries vanish under ours): gone is what was asked.
            if os.path.lexists(path):
                raise


def remove_flat(path: str) -> None:
    """rm -rf of a directory that most often holds a few files and nothing
    more: those are unlinked here, without starting `rm -rf` (a process, and
    subwrap and subprocess to start it).  Anything else (a subdirectory,
    whatever cannot be unlinked) goes to remove_tree."""
    try:
        with os.scandir(path) as entries:
            found = list(entries)
        if any(e.is_dir(follow_symlinks=False) for e in found):
            raise IsADirectoryError(path)
        for entry in found:
            os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        remove_tree(path)


def _create_temp(path: str) -> tuple[int, str]:
    """A new file beside path, opened as tempfile.mkstemp opens one (O_EXCL and
    O_NOFOLLOW: never through a planted symlink), without importing tempfile,
    which brings shutil and random (docs/startup.md)."""
    base = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f"{base}{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise os_error(e, os.path.dirname(path), f"cannot write {q(path)}") from None
    raise StackoError(f"cannot write {path}: no free name for a temporary file beside it")


def kept_mode(path: str) -> int:
    """The mode a rewritten metadata file gets, as atomic_write keeps it."""
    try:
        return os.stat(path).st_mode & 0o644
    except OSError:
        return 0o600


def atomic_write(path: str, data: bytes, mode: int = 0o600, fsync: bool = True) -> bool:
    """Temp file in the same directory, write, fsync, rename, fsync the directory.
    fsync=False leaves both fsyncs to a durable.sync_filesystem that the caller
    makes before it records anything that relies on the file.  False when the
    file is in place but the directory's fsync failed (a warning is printed)."""
    directory = os.path.dirname(path)
    try:   # keep read access an admin granted (never write access for others)
        mode = os.stat(path).st_mode & 0o644
    except OSError:
        pass
    fd, tmp = _create_temp(path)
    try:
        os.fchmod(fd, mode)     # whatever the umask
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise os_error(e, directory, f"cannot write {q(path)}") from None
        raise
    return sync_directory(path) if fsync else True


def sync_directory(path: str) -> bool:
    """fsync the directory of path, just renamed into place; False (and a
    warning) when that fails.
    The new file is in place: failing now would tell the caller that nothing
    changed while it did, and its undo would unmake what the file records (a
    listed image without its layer).  Should the rename not reach the disk, a
    power cut leaves the old file, which is what a crash just before the rename
    leaves: every command is ordered for that.  So this is a warning."""
    directory = os.path.dirname(path)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        print(f"stacko: warning: cannot sync {directory}: {e.strerror}; {path} is written "
              "but may not survive a power cut", file=sys.stderr)
        return False
    return True


def locked(exclusive: bool) -> Callable[[Operation], Operation]:
    """Decorator: run a store operation (first argument: Store) under the lock."""
    def wrap(func: Operation) -> Operation:
        def inner(store: Store, *args: object, **kwargs: object) -> object:
            with store.locked(exclusive):
                return func(store, *args, **kwargs)
        return wraps(inner, func)
    return wrap
