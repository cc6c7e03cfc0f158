"""overlayfs mounts: building the options, mounting and unmounting, through
one backend (STACKO_MOUNT_API: in-process by default, or mount(8) and
umount(8)).  The kernel's mount table is read by mounttable.py.

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
* By default mount(2) and umount2(2) are called in-process (mountapi.py),
  not through mount(8) and umount(8): starting those costs a mount or an
  unmount a good part of its time (docs/startup.md); and util-linux 2.39 and
  newer would use the new mount API, which refuses a lowerdir over 256 bytes
  in one fsconfig call.  STACKO_MOUNT_API=command starts them all the same,
  for hosts that want it (Commands, below).
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

from stacko.errors import MountBusy, MountFailed, NeedsRoot, StackoError
from stacko.lean import wraps
# The mount table is read by mounttable.py: import its names from there.
# find_mount and mounts stay reachable here only for bench/ (bench_mount.py,
# common.py), which reads them as overlay.*: drop them once it does not.
from stacko.mounttable import mounts_under

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable, Sequence

    from stacko import mountapi
    from stacko.mounttable import Mount

MAX_LAYERS = 500          # OVL_MAX_STACK in fs/overlayfs/params.h
MAX_MOUNT_DATA = 4095     # one page, less the NUL
PARAMETERS = "/sys/module/overlay/parameters"
# mountapi (and _ctypes with it) is imported inside the functions that mount,
# never at the top: reading the mount table must not pay for it.


# --- options -----------------------------------------------------------------
def escape_option(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


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


# --- mounting: every mount and unmount goes through the backend --------------
def mount_overlay(target: str, layers_dir: str, lowers: Sequence[str],
                  upper: str | None = None, work: str | None = None,
                  read_only: bool = False, attrs: Sequence[str] = ()) -> None:
    """Mount one overlay at target; layer paths are relative to layers_dir.
    attrs: mount flags among "nodev" and "nosuid"."""
    backend().mount(target, layers_dir, lowers, upper, work, read_only, attrs)


def umount(target: str, lazy: bool = False) -> None:
    """Unmount target; when it is busy, name the processes that hold it."""
    backend().umount(target, lazy)


def gapless_switch() -> bool:
    """Whether a mounted directory can be switched to another overlay without a
    moment in which it shows nothing (MOVE_MOUNT_BENEATH, Linux 6.5)."""
    return backend().gapless()


def prepare_overlay(layers_dir: str, lowers: Sequence[str], upper: str | None,
                    work: str | None, attrs: Sequence[str] = ()) -> mountapi.PreparedOverlay:
    """A detached overlay, not yet visible anywhere (for replace: see mountapi).
    Only where gapless_switch() says so."""
    return backend().prepare(layers_dir, lowers, upper, work, attrs)


def detach_top(target: str) -> None:
    """Detach the top mount at target lazily (its holders keep it)."""
    backend().detach_top(target)


def why_not_gapless() -> str:
    """Why the chosen backend switches no mounted directory without a gap, when
    that is its choice (not the kernel's lack): cutover says so on stderr."""
    return backend().why_not_gapless()


def backend() -> InProcess | Commands:
    """The backend STACKO_MOUNT_API chooses: in-process (unset, auto, new,
    legacy) or mount(8) and umount(8) (command)."""
    from stacko import mountapi     # here: the mount table is read without it
    return COMMANDS if mountapi.forced() == "command" else IN_PROCESS


class InProcess:
    """The default: the new mount API where the kernel has lowerdir+, else
    mount(2), and umount2, all called in-process (mountapi.py); gapless
    switches where the kernel has MOVE_MOUNT_BENEATH."""

    name = "in-process"

    def mount(self, target: str, layers_dir: str, lowers: Sequence[str], upper: str | None,
              work: str | None, read_only: bool, attrs: Sequence[str]) -> None:
        _mount_in_process(target, layers_dir, lowers, upper, work, read_only, attrs)

    def umount(self, target: str, lazy: bool) -> None:
        _umount_in_process(target, lazy)

    def gapless(self) -> bool:
        from stacko import mountapi
        return mountapi.supports_beneath()

    def why_not_gapless(self) -> str:
        return ""       # the kernel's lack, not the backend's choice: -v says it

    def prepare(self, layers_dir: str, lowers: Sequence[str], upper: str | None,
                work: str | None, attrs: Sequence[str]) -> mountapi.PreparedOverlay:
        from stacko import mountapi
        try:
            return mountapi.PreparedOverlay(new_api_parameters(layers_dir, lowers, upper, work),
                                            attrs=attrs)
        except MountFailed as e:
            raise MountFailed(f"cannot build the new mount: {e.message}", hint=kernel_hint(),
                              errno=e.errno) from None

    def detach_top(self, target: str) -> None:
        from stacko import mountapi
        mountapi.detach_top(target)


class Commands:
    """STACKO_MOUNT_API=command: mount(8) and umount(8), run through run.py, for
    hosts whose policy wants mount helpers and audited mount commands.  Each
    starts a process (a few milliseconds more a mount), and the mount data
    goes through mount(8)'s option parser, which splits at every comma: so
    layers are named by absolute path only where the root's path holds no
    character that would need escaping, else relative to the layers
    directory, where the command runs.  No gapless switch: a mounted
    stackpoint is unmounted, then mounted again."""

    name = "command"

    def mount(self, target: str, layers_dir: str, lowers: Sequence[str], upper: str | None,
              work: str | None, read_only: bool, attrs: Sequence[str]) -> None:
        from stacko import run
        from stacko.errors import CommandFailed
        options = page_options(layers_dir, lowers, upper, work)
        if "\\" in options:
            options = build_options(lowers, upper, work, kernel_defaults_off())
        flags = (["ro"] if read_only else []) + list(attrs)     # mount flags, not overlay data
        try:
            run.run(["mount", "-t", "overlay", "-o", ",".join([options] + flags), "stacko",
                     os.path.abspath(target)], cwd=layers_dir)
        except CommandFailed as e:
            raise MountFailed(f"cannot mount {target}: {e.message}", hint=kernel_hint()) from None

    def umount(self, target: str, lazy: bool) -> None:
        from stacko import run
        from stacko.errors import CommandFailed
        try:
            run.run(["umount"] + (["--lazy"] if lazy else []) + ["--", target])
        except CommandFailed as e:
            if "busy" in e.stderr:        # "target is busy": children run in C.UTF-8
                raise busy(target) from None
            raise MountFailed(f"cannot unmount {target}: {e.message}") from None

    def gapless(self) -> bool:
        return False

    def why_not_gapless(self) -> str:
        return ("STACKO_MOUNT_API=command mounts with mount(8), which cannot switch a "
                "mounted directory without a gap")

    def prepare(self, layers_dir: str, lowers: Sequence[str], upper: str | None,
                work: str | None, attrs: Sequence[str]) -> mountapi.PreparedOverlay:
        raise StackoError("STACKO_MOUNT_API=command cannot build a detached mount")

    def detach_top(self, target: str) -> None:
        self.umount(target, lazy=True)


IN_PROCESS, COMMANDS = InProcess(), Commands()


def _mount_in_process(target: str, layers_dir: str, lowers: Sequence[str],
                      upper: str | None = None, work: str | None = None,
                      read_only: bool = False, attrs: Sequence[str] = ()) -> None:
    from stacko import mountapi     # here: _ctypes is not needed to read the mount table
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
    from stacko.log import debug
    debug(f"+ [mount(2)] (in {layers_dir}) overlay stacko -o {options}"
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


def _umount_in_process(target: str, lazy: bool = False) -> None:
    from stacko import mountapi      # umount2 on every kernel: no umount(8) to start
    from stacko.log import debug
    debug(f"+ [umount2] {target}" + (" MNT_DETACH" if lazy else ""))
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
