"""overlayfs mounts: building the options, mounting, unmounting, and reading
the kernel's mount table (``/proc/self/mountinfo``, never mount(8)'s text).

Kernel facts this module relies on:

* A stack is ONE overlayfs mount: lowerdirs top first, one upperdir, and a
  workdir that must be an empty directory on the upper's filesystem.
* The options of the classic mount(2) call are one page of data (4096 bytes
  with the terminating NUL).  Layers are named by absolute path where that
  fits; a deeper stack names them relative to the layers directory, which
  the process is in (``chdir``) for the call, so each costs six bytes and
  500 layers fit whatever the root path is.
* The kernel stacks at most 500 lower layers (OVL_MAX_STACK).
* Without an upperdir overlayfs needs at least two lowerdirs, so a one-layer
  read-only mount adds an empty directory as the second.
* A lower layer must never change while a mount uses it (the kernel calls the
  result undefined), which is why images are frozen once something stacks on them.
* In overlayfs options ``\\`` escapes the next character, so ``:`` and ``,``
  inside a path are written ``\\:`` and ``\\,``.
* mount(2) and umount2(2) are called in-process (mountapi.py), not through
  mount(8) and umount(8): starting those costs a mount or an unmount ~5 ms, a
  sixth of the command; and util-linux 2.39 and newer would use the new mount
  API, which refuses a lowerdir over 256 bytes in one fsconfig call.
* Where the kernel has the new mount API with ``lowerdir+`` (Linux 6.8), every
  stack is mounted through it instead (mountapi.py): one fsconfig call per
  layer with its absolute path, so neither the page limit nor the escaping
  applies.  ``STACKO_MOUNT_API=legacy`` forces the mount(2) path.
* overlayfs shows upperdir in mountinfo as it was given: absolute from the new
  API, absolute or relative to the layers directory from mount(2).
"""
from __future__ import annotations

import errno
import os
from _collections_abc import Callable, Sequence  # = collections.abc: see cli.py

from stacko.errors import MountBusy, MountFailed, NeedsRoot, StackoError
from stacko.records import record
from stacko.state import wraps

MAX_LAYERS = 500          # OVL_MAX_STACK in fs/overlayfs/params.h
MAX_MOUNT_DATA = 4095     # one page, less the NUL
PARAMETERS = "/sys/module/overlay/parameters"
# mountapi (and ctypes with it) is imported inside the functions that mount, never
# here: reading the mount table must not pay for it.  Annotations naming it are
# never evaluated (from __future__ import annotations).


@record
class Mount:
    mount_id: int
    parent_id: int
    device: str              # "major:minor"
    root: str
    mount_point: str
    mount_options: str
    fstype: str
    source: str
    super_options: str

    def option(self, key: str) -> str | None:
        """One value of the super options (overlay's upperdir=, lowerdir= …)."""
        # The kernel writes each value with ',', ' ', tab, newline and '\\' as
        # octal escapes, so splitting on ',' comes first and decoding after; what
        # is left are the backslash escapes of the string as it was given.
        for item in self.super_options.split(","):
            name, _, value = item.partition("=")
            if name == key:
                return unescape_option(decode_mountinfo_field(value))
        return None

    @property
    def read_only(self) -> bool:
        return "ro" in self.mount_options.split(",")


def decode_mountinfo_field(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo.

    Without `re` (re.sub(r"\\([0-7]{3})", ...) in effect), which would cost every
    command that reads the mount table ~5 ms of start-up: see records.is_name."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    decoded = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 3 and not part[:3].strip("01234567"):
            decoded.append(chr(int(part[:3], 8)) + part[3:])
        else:
            decoded.append("\\" + part)
    return "".join(decoded)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            # Positional: a record's keyword path costs 4 times more, and a
            # host may have hundreds of mounts (see records.record).
            mounts.append(Mount(
                int(fields[0]), int(fields[1]), fields[2],       # mount_id, parent_id, device
                decode_mountinfo_field(fields[3]),               # root
                decode_mountinfo_field(fields[4]),               # mount_point
                fields[5], fields[sep + 1],                      # mount_options, fstype
                decode_mountinfo_field(fields[sep + 2]),         # source
                " ".join(fields[sep + 3:])))                     # super_options
        except (ValueError, IndexError):
            continue     # a line we do not understand is no mount of ours
    return mounts


def mounts() -> list[Mount]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def find_mount(path: str, table: list[Mount] | None = None) -> Mount | None:
    """The mount on top at path (the one that shows there), if any."""
    stacked = stacked_at(path, table)
    return stacked[-1] if stacked else None


def stacked_at(path: str, table: list[Mount] | None = None) -> list[Mount]:
    """The mounts at path, bottom first.  A mount put beneath another
    (MOVE_MOUNT_BENEATH) is listed after it but is its parent, so the order
    comes from the parent ids, not from the order of the table."""
    here = [m for m in (table if table is not None else mounts()) if m.mount_point == path]
    ids = {m.mount_id for m in here}
    todo = [m for m in here if m.parent_id not in ids]
    ordered: list[Mount] = []
    while todo:
        m = todo.pop()
        ordered.append(m)
        todo += [n for n in here if n.parent_id == m.mount_id and n not in ordered]
    return ordered + [m for m in here if m not in ordered]      # a loop: never


LAYER_KEYS = ("lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir")


def layers_of(m: Mount, layers_dir: str, work_dir: str) -> set[str]:
    """The layer ids (names in layers_dir or work_dir) an overlay mount uses."""
    if m.fstype != "overlay":
        return set()
    found = set()
    # The values are split on ',' (escaped by the kernel as \054 inside a value),
    # then the ':' between legacy lowerdirs, which stacko's own paths never hold.
    # mount(8) leaves them relative to layers_dir, the new API absolute.
    for item in m.super_options.split(","):
        key, _, value = item.partition("=")
        if key not in LAYER_KEYS:
            continue
        value = decode_mountinfo_field(value)
        for part in value.split(":") if key == "lowerdir" else [value]:
            path = os.path.normpath(os.path.join(layers_dir, unescape_option(part)))
            if os.path.dirname(path) in (layers_dir, work_dir):
                found.add(os.path.basename(path))
    return found


def layer_users(layer: str, layers_dir: str, work_dir: str,
                table: list[Mount] | None = None) -> list[Mount]:
    """Every overlay mount, wherever it is mounted, that uses layer: the mount
    table is the truth, whatever the records or a moved directory say."""
    return [m for m in (table if table is not None else mounts())
            if layer in layers_of(m, layers_dir, work_dir)]


def mounts_under(path: str, table: list[Mount] | None = None) -> list[Mount]:
    prefix = path.rstrip("/") + "/"
    return [m for m in (table if table is not None else mounts())
            if m.mount_point == path or m.mount_point.startswith(prefix)]


# --- options -----------------------------------------------------------------
def escape_option(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def unescape_option(value: str) -> str:
    """Undo escape_option: a backslash takes the next character (but a
    newline) as it is, as re.sub(r"\\(.)", r"\1", value) would."""
    if "\\" not in value:
        return value
    chars, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] != "\n":
            i += 1
        chars.append(value[i])
        i += 1
    return "".join(chars)


def kernel_defaults_off() -> list[str]:
    """Options that keep layers portable, for the features this kernel knows.

    index=off: no inode index tied to this upper/lower pairing (a layer may later
    become a lower elsewhere).  metacopy=off and redirect_dir=off: no metadata-only
    copies or redirects that only this stack could resolve.
    """
    wanted = ["index", "metacopy", "redirect_dir"]
    if os.path.isdir(PARAMETERS):
        known = set(os.listdir(PARAMETERS))
        wanted = [w for w in wanted if w in known]
    return [f"{w}=off" for w in wanted]


def build_options(lowers: Sequence[str], upper: str | None = None,
                  work: str | None = None, extra: Sequence[str] = ()) -> str:
    """The mount data for one overlay: lowers are top first."""
    if not lowers:
        raise ValueError("an overlay needs at least one lower layer")
    if len(lowers) > MAX_LAYERS:
        raise StackoError(f"a stack of {len(lowers)} layers is deeper than the kernel's "
                          f"limit of {MAX_LAYERS}")
    if (upper is None) != (work is None):
        raise ValueError("upperdir and workdir go together")
    parts = ["lowerdir=" + ":".join(escape_option(p) for p in lowers)]
    if upper is not None and work is not None:
        parts += ["upperdir=" + escape_option(upper), "workdir=" + escape_option(work)]
    parts += list(extra)
    options = ",".join(parts)
    if len(options.encode()) > MAX_MOUNT_DATA:
        raise StackoError(f"the overlay options are {len(options.encode())} bytes, more than "
                          f"the kernel takes in one mount call ({MAX_MOUNT_DATA})")
    return options


# --- mounting ----------------------------------------------------------------
def mount_overlay(target: str, layers_dir: str, lowers: Sequence[str],
                  upper: str | None = None, work: str | None = None,
                  read_only: bool = False, attrs: Sequence[str] = ()) -> None:
    """Mount one overlay at target; layer paths are relative to layers_dir.
    attrs: mount flags among "nodev" and "nosuid"."""
    from stacko import mountapi     # here: ctypes is not needed to read the mount table
    if mountapi.supports_new_api():
        params = new_api_parameters(layers_dir, lowers, upper, work)
        try:
            mountapi.mount_parameters(target, params, read_only, attrs)
        except MountFailed as e:
            raise MountFailed(f"cannot mount {target}: {e.message}", hint=kernel_hint(),
                              errno=e.errno) from None
        return
    options = page_options(layers_dir, lowers, upper, work)
    flags = 0
    for flag in (["ro"] if read_only else []) + list(attrs):   # flags of the mount, not data
        flags |= mountapi.MS_FLAGS[flag]
    target = os.path.abspath(target)      # the call runs in layers_dir
    from stacko import run
    run.debug(f"+ [mount(2)] (in {layers_dir}) overlay stacko -o {options}"
              f"{''.join(' ' + f for f in (['ro'] if read_only else []) + list(attrs))} {target}")
    # Deep stacks name their layers relative to layers_dir (see page_options),
    # so the call is made from inside it, and the process goes back where it was.
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(layers_dir)
        try:
            mountapi.mount("stacko", target, "overlay", flags, options)
        finally:
            os.fchdir(here)
    except OSError as e:
        raise MountFailed(f"cannot mount {target}: mount(2) failed: {mountapi.errno_name(e.errno)}"
                          f" ({e.strerror})", hint=kernel_hint(), errno=e.errno or 0) from None
    finally:
        os.close(here)


def page_options(layers_dir: str, lowers: Sequence[str], upper: str | None = None,
                 work: str | None = None) -> str:
    """The mount(2) data for one stack, layer paths relative to layers_dir.

    Absolute paths where they fit in the page: mountinfo shows the options as
    given, and a relative name is read against whichever root asks, so the
    mount of one root would seem to use the layer of the same id in another
    (a copy of the root beside it).  A stack too deep for that gets the
    six-byte relative names, which fit 500 layers."""
    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(layers_dir, path))
    extra = kernel_defaults_off()
    try:
        return build_options([absolute(p) for p in lowers],
                             absolute(upper) if upper is not None else None,
                             absolute(work) if work is not None else None, extra)
    except StackoError:      # more than a page (or too deep, which says so again below)
        return build_options(lowers, upper, work, extra)


def new_api_parameters(layers_dir: str, lowers: Sequence[str], upper: str | None = None,
                       work: str | None = None) -> mountapi.Parameters:
    """The fsconfig calls for one stack: absolute layer paths, no escaping."""
    check_depth(lowers)
    if (upper is None) != (work is None):
        raise ValueError("upperdir and workdir go together")

    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(layers_dir, path))
    from stacko import mountapi
    return mountapi.overlay_parameters(
        [absolute(p) for p in lowers],
        # The kernel unescapes upperdir and workdir (ovl_mount_dir) but not lowerdir+.
        escape_option(absolute(upper)) if upper is not None else None,
        escape_option(absolute(work)) if work is not None else None, kernel_defaults_off())


def check_depth(lowers: Sequence[str]) -> None:
    if not lowers:
        raise ValueError("an overlay needs at least one lower layer")
    if len(lowers) > MAX_LAYERS:
        raise StackoError(f"a stack of {len(lowers)} layers is deeper than the kernel's "
                          f"limit of {MAX_LAYERS}")


def gapless_switch() -> bool:
    """Whether a mounted directory can be switched to another overlay without a
    moment in which it shows nothing (MOVE_MOUNT_BENEATH, Linux 6.5)."""
    from stacko import mountapi
    return mountapi.supports_beneath()


def prepare_overlay(layers_dir: str, lowers: Sequence[str], upper: str | None,
                    work: str | None, attrs: Sequence[str] = ()) -> mountapi.PreparedOverlay:
    """A detached overlay, not yet visible anywhere (for replace: see mountapi)."""
    try:
        from stacko import mountapi
        return mountapi.PreparedOverlay(new_api_parameters(layers_dir, lowers, upper, work),
                                        attrs=attrs)
    except MountFailed as e:
        raise MountFailed(f"cannot build the new mount: {e.message}", hint=kernel_hint(),
                          errno=e.errno) from None


def detach_top(target: str) -> None:
    """Detach the top mount at target lazily (its holders keep it)."""
    from stacko import mountapi
    mountapi.detach_top(target)


def device_number(mount: Mount) -> int:
    """st_dev of the files of a mount, from mountinfo's "major:minor"."""
    major, _, minor = mount.device.partition(":")
    return os.makedev(int(major), int(minor))


def boot_id() -> str:
    """Device numbers mean something only until the next boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def kernel_hint() -> str | None:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            if "overlay" not in f.read():
                return "this kernel has no overlay filesystem: try `modprobe overlay`"
    except OSError:
        pass
    return "`dmesg | grep overlay` shows the kernel's reason"


def umount(target: str, lazy: bool = False) -> None:
    """Unmount target; when it is busy, name the processes that hold it."""
    from stacko import mountapi, run      # umount2 on every kernel: no umount(8) to start
    run.debug(f"+ [umount2] {target}" + (" MNT_DETACH" if lazy else ""))
    try:
        mountapi.umount2(target, mountapi.MNT_DETACH if lazy else 0)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise busy(target) from None
        raise MountFailed(f"cannot unmount {target}: {mountapi.errno_name(e.errno)} "
                          f"({e.strerror})", errno=e.errno or 0) from None


def busy(target: str) -> MountBusy:
    """The error for an unmount the kernel refused with EBUSY, whichever path asked."""
    return MountBusy(f"{target} is busy: {busy_reason(target)}",
                     hint="stop those processes, or unmount with --lazy")


def busy_reason(target: str) -> str:
    from stacko import procs
    users = procs.holders(target)
    beneath = [m.mount_point for m in mounts_under(target) if m.mount_point != target]
    reasons = []
    if users:
        reasons.append("used by " + procs.describe(users))
    if beneath:
        reasons.append("mounts beneath it: " + ", ".join(beneath))
    return "; ".join(reasons) or "held by the kernel or a process stacko cannot see"



def needs_root(action: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator for commands that always mount or unmount: refuse before the lock."""
    def wrap(func: Callable[..., object]) -> Callable[..., object]:
        def inner(*args: object, **kwargs: object) -> object:
            require_root(action)
            return func(*args, **kwargs)
        return wraps(inner, func)
    return wrap


def require_root(action: str) -> None:
    """Mounting and unmounting need root (CAP_SYS_ADMIN); say so before trying."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"{action} needs root: it mounts or unmounts",
                        hint="run it as root, e.g. with sudo")
