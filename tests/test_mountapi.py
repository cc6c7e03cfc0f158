"""stacko.mountapi: the new mount API through ctypes (fsopen … move_mount)."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import List

import pytest
from hypothesis import given, settings, strategies as st

from stacko import mountapi
from stacko.errors import MountFailed, StackoError


# --- no root needed ----------------------------------------------------------
@pytest.mark.parametrize("release, version", [
    ("6.18.44-fc-v782", (6, 18)), ("6.5.0", (6, 5)), ("5.10.0-28-amd64", (5, 10)),
    ("6.8rc1", (6, 8)), ("garbage", (0, 0)), ("", (0, 0)), ("6.", (0, 0)), (".5", (0, 0)),
    ("x6.5", (0, 0)), ("06.010", (6, 10)),
])
def test_kernel_version(release: str, version: tuple) -> None:
    assert mountapi.kernel_version(release) == version


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789.-a ²٣") + ["6.8", "10.", ".5"]),
                max_size=12).map("".join))
def test_kernel_version_reads_as_the_regex_did(release: str) -> None:
    """kernel_version does without `re` (a mount must not import it): same result."""
    match = re.match(r"(\d+)\.(\d+)", release, re.ASCII)
    expected = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    assert mountapi.kernel_version(release) == expected


def test_overlay_parameters_one_layer_each() -> None:
    params = mountapi.overlay_parameters(["/a,b:c", "/d"], "/u", "/w", ["index=off", "ro"])
    assert params == [("source", "stacko"), ("lowerdir+", "/a,b:c"), ("lowerdir+", "/d"),
                      ("upperdir", "/u"), ("workdir", "/w"), ("index", "off"), ("ro", None)]
    assert mountapi.describe(params).startswith("source=stacko lowerdir+=/a,b:c ")


def test_overlay_parameters_read_only() -> None:
    assert mountapi.overlay_parameters(["/a", "/b"], None, None, []) == [
        ("source", "stacko"), ("lowerdir+", "/a"), ("lowerdir+", "/b")]


@pytest.mark.parametrize("value, mode", [("", ""), ("auto", ""), ("legacy", "legacy"),
                                         ("NEW", "new"), (" legacy ", "legacy")])
def test_forced(monkeypatch: pytest.MonkeyPatch, value: str, mode: str) -> None:
    monkeypatch.setenv(mountapi.ENV, value)
    assert mountapi.forced() == mode


def test_forced_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mountapi.ENV, "sometimes")
    with pytest.raises(StackoError, match="STACKO_MOUNT_API"):
        mountapi.forced()


def test_legacy_forced_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mountapi.ENV, "legacy")
    assert not mountapi.supports_new_api()
    assert not mountapi.supports_beneath()


def test_errno_name() -> None:
    assert mountapi.errno_name(2) == "ENOENT"
    assert mountapi.errno_name(99999) == "errno 99999"


def test_c_types_are_ctypes_own() -> None:
    """mountapi binds the C library through _ctypes (see its docstring): its
    types must be the ones ctypes would have passed."""
    import ctypes
    pairs = [(mountapi._CLong, ctypes.c_long), (mountapi._CInt, ctypes.c_int),
             (mountapi._CUInt, ctypes.c_uint), (mountapi._CULong, ctypes.c_ulong),
             (mountapi._CCharP, ctypes.c_char_p)]
    for ours, theirs in pairs:
        assert ours._type_ == theirs._type_ and ctypes.sizeof(ours) == ctypes.sizeof(theirs)
    assert mountapi._CInt(-100).value == -100 and mountapi._CUInt(0x200).value == 0x200
    assert mountapi._CCharP(None).value is None
    for function, restype in ((mountapi._syscall, ctypes.c_long), (mountapi._umount2, ctypes.c_int),
                              (mountapi._mount, ctypes.c_int)):
        assert function._flags_ == ctypes.CDLL(None, use_errno=True).syscall._flags_
        assert ctypes.sizeof(function._restype_) == ctypes.sizeof(restype)


def test_calls_report_the_errno_of_the_kernel(workdir: Path) -> None:
    """A failing call gives the kernel's errno, through syscall(2), mount(2) and umount2(2)."""
    with pytest.raises(OSError) as info:
        mountapi.umount2(str(workdir / "missing"), 0)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        mountapi.mount("none", str(workdir / "missing"), "tmpfs", 0, "")
    assert info.value.errno == errno.ENOENT        # the target is looked up first
    with pytest.raises(OSError) as info:
        mountapi.fsopen("no-such-filesystem")
    assert info.value.errno == (errno.ENODEV if os.geteuid() == 0 else errno.EPERM)


def test_failed_call_names_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> int:
        raise OSError(16, os.strerror(16))
    with pytest.raises(MountFailed, match=r"move_mount beneath /x failed: EBUSY") as info:
        mountapi._step("move_mount", "beneath /x", fail)
    assert info.value.errno == 16


# --- real mounts ---------------------------------------------------------------
def _layers(base: Path, count: int, name_len: int = 5) -> List[str]:
    layers = []
    for i in range(count):
        d = base / f"{i:0{name_len}d}"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        layers.append(str(d))
    return layers


def _mount_entry(target: Path) -> str:
    with open("/proc/self/mountinfo") as f:
        found = [line for line in f if line.split(" ")[4] == str(target)]
    return found[-1] if found else ""


@pytest.fixture
def new_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mountapi.ENV, raising=False)
    if not mountapi.supports_new_api():
        pytest.skip("this kernel lacks fsopen/lowerdir+")


@pytest.mark.mounts
def test_probe_on_this_kernel(new_api: None) -> None:
    assert mountapi.supports_new_api()
    assert mountapi.supports_beneath() == (mountapi.kernel_version() >= (6, 5))


@pytest.mark.mounts
def test_mount_layers_upper_and_ro(workdir: Path, new_api: None) -> None:
    lowers = _layers(workdir / "l", 2)
    (workdir / "u").mkdir()
    (workdir / "w").mkdir()
    target = workdir / "mnt"
    target.mkdir()
    mountapi.mount_overlay(str(target), lowers, str(workdir / "u"), str(workdir / "w"),
                           ["index=off", "metacopy=off", "redirect_dir=off"])
    assert sorted(os.listdir(target)) == ["f0", "f1"]
    (target / "new").write_text("x")
    assert (workdir / "u" / "new").read_text() == "x"
    entry = _mount_entry(target)
    assert "lowerdir+=" in entry and " overlay stacko " in entry
    ro = workdir / "ro"
    ro.mkdir()
    mountapi.mount_overlay(str(ro), lowers, read_only=True)
    assert " ro," in _mount_entry(ro) or _mount_entry(ro).split(" ")[5].startswith("ro")
    with pytest.raises(OSError):
        (ro / "x").write_text("no")


@pytest.mark.mounts
def test_500_long_layers_need_no_escaping(workdir: Path, new_api: None) -> None:
    """Each path would blow the one page of mount(2) data many times over; and
    ``:`` ``,`` in names need no escaping with lowerdir+."""
    base = workdir / ("deep, odd:name " * 8)
    lowers = _layers(base, 500, name_len=40)
    assert sum(len(p) + 1 for p in lowers) > 20 * 4096
    target = workdir / "mnt"
    target.mkdir()
    mountapi.mount_overlay(str(target), lowers)
    assert len(os.listdir(target)) == 500
    assert (target / "f499").read_text() == "499"


@pytest.mark.mounts
def test_501_layers_fail_clearly(workdir: Path, new_api: None) -> None:
    lowers = _layers(workdir / "l", 501)
    target = workdir / "mnt"
    target.mkdir()
    with pytest.raises(MountFailed, match=r"fsconfig lowerdir\+=.* failed: E"):
        mountapi.mount_overlay(str(target), lowers)
    assert _mount_entry(target) == ""


@pytest.mark.mounts
def test_missing_layer_names_it(workdir: Path, new_api: None) -> None:
    target = workdir / "mnt"
    target.mkdir()
    with pytest.raises(MountFailed, match=r"lowerdir\+=.*/nonexistent failed: ENOENT"):
        mountapi.mount_overlay(str(target), [str(workdir / "nonexistent"), str(workdir)])


@pytest.mark.mounts
def test_replace_beneath_keeps_open_files_on_old_tree(workdir: Path, new_api: None) -> None:
    if not mountapi.supports_beneath():
        pytest.skip("no MOVE_MOUNT_BENEATH")
    a, b = _layers(workdir / "l", 2)
    for name in ("ua", "wa", "ub", "wb", "mnt"):
        (workdir / name).mkdir()
    target = workdir / "mnt"
    mountapi.mount_overlay(str(target), [a], str(workdir / "ua"), str(workdir / "wa"))
    old_device = os.stat(target).st_dev
    held = os.open(target / "f0", os.O_RDONLY)
    cwd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        params = mountapi.overlay_parameters([b], str(workdir / "ub"), str(workdir / "wb"), [])
        device = mountapi.replace_beneath(str(target), params)
        assert os.listdir(target) == ["f1"]
        assert os.stat(target).st_dev == device != old_device
        assert os.read(held, 10) == b"0"
        assert os.fstat(cwd).st_dev == old_device          # the old tree lives on
        assert sorted(os.listdir(f"/proc/self/fd/{cwd}")) == ["f0"]
        # only one mount left at the target
        with open("/proc/self/mountinfo") as f:
            assert sum(1 for line in f if line.split(" ")[4] == str(target)) == 1
    finally:
        os.close(held)
        os.close(cwd)


@pytest.mark.mounts
def test_replace_beneath_failure_leaves_old_mount(workdir: Path, new_api: None) -> None:
    if not mountapi.supports_beneath():
        pytest.skip("no MOVE_MOUNT_BENEATH")
    a, = _layers(workdir / "l", 1)
    for name in ("ua", "wa", "mnt"):
        (workdir / name).mkdir()
    target = workdir / "mnt"
    mountapi.mount_overlay(str(target), [a], str(workdir / "ua"), str(workdir / "wa"))
    before = _mount_entry(target)
    bad = mountapi.overlay_parameters([str(workdir / "missing")], None, None, [])
    with pytest.raises(MountFailed, match="ENOENT"):
        mountapi.replace_beneath(str(target), bad)
    assert _mount_entry(target) == before
    # beneath a directory that is not a mount: the kernel refuses, nothing attached
    plain = workdir / "plain"
    plain.mkdir()
    with pytest.raises(MountFailed, match="move_mount beneath"):
        mountapi.replace_beneath(str(plain), mountapi.overlay_parameters(
            [a, str(workdir / "ua")], None, None, []))
    assert _mount_entry(plain) == ""
