"""The kernel's new mount API (fsopen, fsconfig, fsmount, move_mount), reached
through ``syscall(2)``, since the C library wraps only some of it; and the classic mount(2) and umount2(2), which it wraps, called the
same way so that no mount(8) or umount(8) has to be started.

Why stacko uses it where the kernel has it:

* ``lowerdir+`` (Linux 6.8) hands overlayfs one layer per fsconfig call, so
  the one-page limit of mount(2) data, and the escaping of ``:`` ``,`` ``\\``
  in paths, no longer apply: layers are passed as plain absolute paths.
* ``fsmount`` builds a mount that is not attached anywhere yet, and
  ``move_mount(..., MOVE_MOUNT_BENEATH)`` (Linux 6.5) tucks it beneath the
  mount that is on a directory now.  Detaching the old top mount afterwards
  switches the directory from the old tree to the new one without an instant
  in which it shows the empty directory underneath.  Processes that hold files
  or a working directory in the old tree keep it until they let go.

The syscall numbers below come from the generic table that every architecture
shares since Linux 5.1 (424 onwards), so x86_64 and aarch64 agree on them.
Errors become MountFailed, named by errno and carrying the kernel's own
message from the fs context log when it wrote one.

The C library is reached through ``lean.libc``, ctypes' C core without the
``ctypes`` package around it (see lean.py for why, docs/startup.md for the
figures).
"""
from __future__ import annotations

import errno
import os

from stacko.errors import MountFailed, StackoError
from stacko.lean import libc
from stacko.log import debug

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
ARCHITECTURES = ("x86_64", "aarch64")   # where the numbers above are verified

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTRS = {"nosuid": 0x2, "nodev": 0x4}     # MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_BENEATH = 0x200
MNT_DETACH = 0x2
AT_FDCWD = -100
MS_FLAGS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4}   # MS_RDONLY, MS_NOSUID, MS_NODEV: mount(2)

TYPE_CHECKING = False
if TYPE_CHECKING:   # an alias for annotations only: `str | None` fails at run time on 3.9
    from collections.abc import Sequence

    Parameters = list[tuple[str, str | None]]   # fsconfig (key, value); None: a flag
# How stacko mounts (overlay.backend): unset or "auto", the new API where the
# kernel has it, else mount(2); "new" insists on the new API; "legacy" forces
# mount(2); "command" runs mount(8) and umount(8) instead (overlay.Commands).
ENV = "STACKO_MOUNT_API"
BENEATH_SINCE = (6, 5)
DIGITS = "0123456789"



# --- the C library, through lean.libc (ctypes' C core) --------------------------
_c = libc()
_syscall = _c.function("syscall", _c.c_long)
_umount2 = _c.function("umount2", _c.c_int)
_mount = _c.function("mount", _c.c_int)
_CLong, _CInt, _CUInt, _CULong, _CCharP = _c.c_long, _c.c_int, _c.c_uint, _c.c_ulong, _c.c_char_p


def _call(name: str, number: int, *args: object) -> int:
    result = _syscall(_CLong(number), *args)
    if result < 0:
        err = _c.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def errno_name(err: int | None) -> str:
    return errno.errorcode.get(err or 0, f"errno {err}")


def _b(text: str) -> bytes:
    return os.fsencode(text)


# --- the system calls -------------------------------------------------------
def fsopen(fstype: str) -> int:
    return _call("fsopen", SYS_FSOPEN, _CCharP(_b(fstype)), _CUInt(FSOPEN_CLOEXEC))


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    _call("fsconfig", SYS_FSCONFIG, _CInt(fd), _CUInt(cmd),
          _CCharP(_b(key) if key is not None else None),
          _CCharP(_b(value) if value is not None else None), _CInt(0))


def fsmount(fd: int, attr_flags: int = 0) -> int:
    return _call("fsmount", SYS_FSMOUNT, _CInt(fd), _CUInt(FSMOUNT_CLOEXEC), _CUInt(attr_flags))


def move_mount(from_fd: int, to_path: str, flags: int) -> None:
    _call("move_mount", SYS_MOVE_MOUNT, _CInt(from_fd), _CCharP(b""),
          _CInt(AT_FDCWD), _CCharP(_b(to_path)), _CUInt(flags))


def umount2(target: str, flags: int) -> None:
    if _umount2(_CCharP(_b(target)), _CInt(flags)) != 0:
        err = _c.get_errno()
        raise OSError(err, os.strerror(err))


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """The classic mount(2): data is the filesystem's options, at most one page."""
    if _mount(_CCharP(_b(source)), _CCharP(_b(target)), _CCharP(_b(fstype)), _CULong(flags),
              _CCharP(_b(data))) != 0:
        err = _c.get_errno()
        raise OSError(err, os.strerror(err))


def fs_log(fd: int) -> list[str]:
    """The messages the filesystem wrote to its context (``e overlay: …``)."""
    lines = []
    for _ in range(32):
        try:
            data = os.read(fd, 4096)
        except OSError:
            break          # ENODATA: the log is empty
        if not data:
            break
        lines.append(data.decode("utf-8", "replace").strip())
    return lines


# --- what this kernel can do ---------------------------------------------------
def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a release such as "6.8.0-1-amd64" (ASCII digits, dot,
    digits); (0, 0) when it does not start so.  Read with str methods: a
    regular expression would import `re` into every mount (see names.is_name)."""
    major, dot, rest = (os.uname().release if release is None else release).partition(".")
    minor = rest[:len(rest) - len(rest.lstrip(DIGITS))]
    if not dot or not minor or not major or major.strip(DIGITS):
        return (0, 0)
    return (int(major), int(minor))


def forced() -> str:
    """The STACKO_MOUNT_API setting: "", "new", "legacy" or "command"."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return ""
    if value not in ("new", "legacy", "command"):
        raise StackoError(f"{ENV}={value!r} is not understood",
                          hint=f"set {ENV} to new, legacy, command or auto, or unset it")
    return value


_probed: list[bool] = []     # the answer of _probe_new_api, once asked


def _probe_new_api() -> bool:
    """Whether this kernel has the new mount API for overlayfs, asked once a
    process (a list, not functools.lru_cache: functools brings collections
    into every mount, see cli.py)."""
    if not _probed:
        _probed.append(_probe_kernel())
    return _probed[0]


def _probe_kernel() -> bool:
    """fsopen("overlay") and a harmless ``lowerdir+``: both there means 6.8+.

    Nothing is created: the context is closed before FSCONFIG_CMD_CREATE.
    """
    if os.uname().machine not in ARCHITECTURES:
        return False
    try:
        fd = fsopen("overlay")
    except OSError as e:
        debug(f"mount API: fsopen(overlay) failed ({errno_name(e.errno)}); using mount(2)")
        return False
    try:
        fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", "/")
        return True
    except OSError as e:
        debug(f"mount API: overlay has no lowerdir+ ({errno_name(e.errno)}); using mount(2)")
        return False
    finally:
        os.close(fd)


def supports_new_api() -> bool:
    """Whether stack mounts go through fsopen/fsconfig(lowerdir+)/fsmount."""
    mode = forced()
    if mode in ("legacy", "command"):
        return False
    if mode == "new":
        if not _probe_new_api():
            raise StackoError(f"{ENV}=new, but this kernel lacks the new mount API for "
                              "overlayfs (fsopen, and lowerdir+ from Linux 6.8)",
                              hint=f"unset {ENV} to use mount(2)")
        return True
    return _probe_new_api()


def supports_beneath() -> bool:
    """Whether a mounted stackpoint can be switched without a gap.

    MOVE_MOUNT_BENEATH exists from Linux 6.5; the kernel version is the cheap
    probe (an unknown flag would only show as EINVAL at the real attempt).
    """
    return supports_new_api() and kernel_version() >= BENEATH_SINCE


# --- overlay mounts -----------------------------------------------------------
def overlay_parameters(lowers: Sequence[str], upper: str | None, work: str | None,
                       extra: Sequence[str]) -> Parameters:
    """The fsconfig calls for one overlay, in order: lowers are top first and
    absolute; extra holds ``key=value`` options (index=off …) or bare flags."""
    params: Parameters = [("source", "stacko")]
    params += [("lowerdir+", layer) for layer in lowers]
    if upper is not None and work is not None:
        params += [("upperdir", upper), ("workdir", work)]
    for option in extra:
        key, sep, value = option.partition("=")
        params.append((key, value if sep else None))
    return params


def describe(params: Parameters) -> str:
    return " ".join(k if v is None else f"{k}={v}" for k, v in params)


def make_overlay(params: Parameters, read_only: bool = False, attrs: Sequence[str] = ()) -> int:
    """A detached overlay mount built from params; returns its mount fd.
    attrs: "nodev", "nosuid" (flags of the mount, not of the overlay)."""
    flags = MOUNT_ATTR_RDONLY if read_only else 0
    for attr in attrs:
        flags |= MOUNT_ATTRS[attr]
    fd = _step("fsopen", "overlay", lambda: fsopen("overlay"))
    try:
        for key, value in params:
            cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            _step("fsconfig", f"{key}={value}" if value is not None else key,
                  lambda: fsconfig(fd, cmd, key, value), fd)
        if read_only:
            _step("fsconfig", "ro", lambda: fsconfig(fd, FSCONFIG_SET_FLAG, "ro"), fd)
        _step("fsconfig", "create", lambda: fsconfig(fd, FSCONFIG_CMD_CREATE), fd)
        return _step("fsmount", "overlay",
                     lambda: fsmount(fd, flags), fd)
    finally:
        os.close(fd)


def _step(call: str, what: str, action, log_fd: int | None = None):  # type: ignore[no-untyped-def]
    try:
        return action()
    except OSError as e:
        kernel = "; ".join(fs_log(log_fd)) if log_fd is not None else ""
        raise MountFailed(f"{call} {what} failed: {errno_name(e.errno)} ({e.strerror})"
                          + (f"; the kernel says: {kernel}" if kernel else ""),
                          errno=e.errno or 0) from None


def mount_overlay(target: str, lowers: Sequence[str], upper: str | None = None,
                  work: str | None = None, extra: Sequence[str] = (),
                  read_only: bool = False) -> None:
    """Mount one overlay at target, one ``lowerdir+`` per layer (absolute paths)."""
    mount_parameters(target, overlay_parameters(lowers, upper, work, extra), read_only)


def mount_parameters(target: str, params: Parameters, read_only: bool = False,
                     attrs: Sequence[str] = ()) -> None:
    """Mount the overlay that params describe at target."""
    debug(f"+ [mount API] overlay {describe(params)}{' ro' if read_only else ''}"
          f"{''.join(' ' + a for a in attrs)} -> move_mount {target}")
    mfd = make_overlay(params, read_only, attrs)
    try:
        _step("move_mount", f"to {target}",
              lambda: move_mount(mfd, target, MOVE_MOUNT_F_EMPTY_PATH))
    finally:
        os.close(mfd)


class PreparedOverlay:
    """A detached overlay mount, ready to be tucked beneath a mounted directory.

    Closing it before attach() destroys the mount: nothing was ever visible.
    """

    def __init__(self, params: Parameters, read_only: bool = False,
                 attrs: Sequence[str] = ()) -> None:
        self.params = list(params)
        debug(f"+ [mount API] overlay {describe(self.params)}"
              f"{''.join(' ' + a for a in attrs)} (detached, for a gapless switch)")
        self.fd: int | None = make_overlay(self.params, read_only, attrs)
        self.device = os.fstat(self.fd).st_dev

    def attach_beneath(self, target: str) -> None:
        """Put this mount beneath the top mount at target: target still shows
        the old tree until that top mount is detached."""
        assert self.fd is not None
        fd = self.fd
        debug(f"+ [mount API] move_mount beneath {target}")
        _step("move_mount", f"beneath {target}",
              lambda: move_mount(fd, target, MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_BENEATH))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "PreparedOverlay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detach_top(target: str) -> None:
    """Lazily detach the top mount at target: whoever holds files in it keeps
    them (the tree lives on, unreachable by path) until they let go."""
    debug(f"+ [mount API] umount2 {target} MNT_DETACH")
    _step("umount2", f"{target} (detach)", lambda: umount2(target, MNT_DETACH))


def replace_beneath(target: str, params: Parameters,
                    read_only: bool = False) -> int:
    """Gapless replace: the new overlay goes beneath the one at target, then the
    old one is detached.  Returns the device number of the new mount."""
    with PreparedOverlay(params, read_only) as new:
        new.attach_beneath(target)
        device = new.device
    detach_top(target)
    return device
