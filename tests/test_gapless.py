"""Gapless cutover and fallback (MOVE_MOUNT_BENEATH), every mount backend, and
the refusal to mount an instance twice while its detached mount is held."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import Runner, populate, snapshot
from stacko import mountapi, mounttable, overlay, stackpoints
from stacko.errors import MountFailed, StackoError
from stacko.state import Store

pytestmark = pytest.mark.mounts

# STACKO_MOUNT_API: the default (new API where there is one), mount(2), and
# mount(8) with umount(8)
BACKENDS = ["", "legacy", "command"]


def new_api_here() -> bool:
    return os.geteuid() == 0 and mountapi._probe_new_api()


def gapless_here() -> bool:
    return new_api_here() and mountapi.kernel_version() >= mountapi.BENEATH_SINCE


needs_gapless = pytest.mark.skipif(not gapless_here(), reason="no MOVE_MOUNT_BENEATH here")


@pytest.fixture(params=BACKENDS, ids=["default", "legacy", "command"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "":
        monkeypatch.delenv(mountapi.ENV, raising=False)
    else:
        monkeypatch.setenv(mountapi.ENV, request.param)
    return request.param


@pytest.fixture
def default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mountapi.ENV, raising=False)


@pytest.fixture
def point(stacko: Runner) -> Path:
    # (request it after backend, so that it is mounted by the backend under test)
    """Stackpoint p on instance a (f=A, only-a), mounted; image b (f=B) stacked on a."""
    populate(stacko, "a", {"f": "A\n", "only-a": "a\n"})
    populate(stacko, "b", {"f": "B\n"}, parent="a")
    stacko("new-stackpoint", "p", "a")
    return Path(stacko("mount-stackpoint", "p").out)


def entries(directory: Path) -> List[str]:
    """The super options of each mount at directory."""
    return [m.super_options for m in mounttable.mounts() if m.mount_point == str(directory)]


def state(root: Path) -> dict:
    return json.loads((root / "stackpoints.json").read_text())["stackpoints"]["p"]


class Reader:
    """A process that opens a file and its directory in the stackpoint, then,
    on each line of input, reads the file again from its fd and lists its cwd."""

    CODE = r"""
import mmap, os, sys
path = sys.argv[1]
os.chdir(os.path.dirname(path))
fd = os.open(path, os.O_RDONLY)
mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if sys.argv[2] == "mmap" else None
if mapped is not None:
    os.close(fd)
print("ready", flush=True)
for line in sys.stdin:
    data = mapped[:] if mapped is not None else os.pread(fd, 100, 0)
    print(data.decode().strip(), ",".join(sorted(os.listdir("."))) if mapped is None else "",
          flush=True)
"""

    def __init__(self, path: Path, how: str = "fd") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(path), how],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def read(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def reader() -> Iterator[list]:
    started: List[Reader] = []
    yield started
    for r in started:
        r.stop()


# --- both backends -----------------------------------------------------------
def test_cutover_fallback_set_on_both_backends(stacko: Runner, root: Path, backend: str,
                                               point: Path) -> None:
    expect_new = backend == "" and new_api_here()
    assert ("lowerdir+=" in entries(point)[0]) == expect_new
    r = stacko("-v", "cutover-stackpoint", "p", "b")
    assert r.out == str(point)
    assert (point / "f").read_text() == "B\n"
    gapless = backend == "" and gapless_here()
    assert (f"switching {point} without a gap" in r.stderr) == gapless
    assert ("by unmount-then-mount" in r.stderr) == (not gapless)
    if backend == "command":      # audited commands, and a plain word about the gap
        assert f"+ umount -- {shlex.quote(str(point))}" in r.stderr and "+ (cd " in r.stderr
        assert "[umount2]" not in r.stderr and "[mount" not in r.stderr
        assert (f"stacko: cutover-stackpoint: STACKO_MOUNT_API=command mounts with mount(8), "
                f"which cannot switch a mounted directory without a gap: unmounting {point}, "
                "then mounting it again") in r.stderr
    elif not gapless:
        assert "+ [umount2] " in r.stderr
    if backend != "command":
        assert "mount(8)" not in r.stderr
    assert len(entries(point)) == 1
    (point / "written-in-b").write_text("b")

    r = stacko("-v", "fallback-stackpoint", "p")
    assert (point / "f").read_text() == "A\n"
    assert not (point / "written-in-b").exists()
    assert len(entries(point)) == 1
    stacko("set-stackpoint-instance", "p", "b")
    assert (point / "written-in-b").read_text() == "b"
    assert stacko("is-stackpoint-mounted", "p").returncode == 0
    info = json.loads(stacko("list-stackpoints", "--json").out)
    assert info[0]["current"] == "b" and info[0]["mounted_image"] == "b"
    stacko("umount-stackpoint", "p")
    assert entries(point) == []


def test_backends_recognise_each_others_mounts(stacko: Runner, point: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stackpoint mounted by one backend is switched by the other."""
    for mode in ("legacy", "", "command", "legacy", "command"):
        monkeypatch.setenv(mountapi.ENV, mode)
        stacko("cutover-stackpoint", "p", "b")
        assert (point / "f").read_text() == "B\n"
        stacko("fallback-stackpoint", "p")
        assert (point / "f").read_text() == "A\n"
    assert stacko("mount-stackpoint", "p").out == str(point)     # already mounted: exit 0
    stacko("umount-stackpoint", "p")


def test_forcing_the_new_api_where_it_is_missing_is_an_error(stacko: Runner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if new_api_here():
        pytest.skip("this kernel has the new API")
    populate(stacko, "a", {})
    stacko("new-stackpoint", "p", "a")
    monkeypatch.setenv(mountapi.ENV, "new")
    assert "STACKO_MOUNT_API" in stacko("mount-stackpoint", "p", rc=1).stderr


def test_nonsense_backend_is_refused(stacko: Runner, point: Path, root: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(root)
    monkeypatch.setenv(mountapi.ENV, "fastest")
    assert "STACKO_MOUNT_API" in stacko("cutover-stackpoint", "p", "b", rc=1).stderr
    assert snapshot(root) == before


def test_legacy_cutover_of_a_busy_stackpoint_is_refused(stacko: Runner, root: Path, point: Path,
                                                        reader: list,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mountapi.ENV, "legacy")
    reader.append(Reader(point / "f"))
    before = snapshot(root)
    r = stacko("cutover-stackpoint", "p", "b", rc=1)
    assert str(reader[0].proc.pid) in r.stderr
    assert snapshot(root) == before
    assert (point / "f").read_text() == "A\n"


# --- gapless -----------------------------------------------------------------------
@needs_gapless
def test_a_process_holding_files_keeps_the_old_tree(stacko: Runner, root: Path, point: Path,
                                                    reader: list, default_backend: None) -> None:
    reader.append(Reader(point / "f"))
    assert reader[0].read() == "A f,only-a"
    stacko("cutover-stackpoint", "p", "b")
    assert (point / "f").read_text() == "B\n"
    assert reader[0].read() == "A f,only-a"       # its fd and cwd are in the old tree
    (point / "new").write_text("n")
    assert reader[0].read() == "A f,only-a"
    assert [d["image"] for d in state(root)["detached"]] == ["a"]


@needs_gapless
def test_reader_thread_sees_no_failed_reads(stacko: Runner, point: Path,
                                            default_backend: None) -> None:
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def read_loop() -> None:
        while not stop.is_set():
            try:
                with open(point / "f") as f:
                    assert f.read() in ("A\n", "B\n")
                counts["ok"] += 1
            except (OSError, AssertionError):
                counts["failed"] += 1

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for _ in range(10):
            stacko("cutover-stackpoint", "p", "b")
            stacko("fallback-stackpoint", "p")
    finally:
        stop.set()
        thread.join()
    assert counts["failed"] == 0 and counts["ok"] > 100, counts
    assert len(entries(point)) == 1


@needs_gapless
@pytest.mark.parametrize("how", ["fd", "mmap"])
def test_instance_with_held_detached_mount_is_refused(stacko: Runner, root: Path, point: Path,
                                                      reader: list, default_backend: None,
                                                      how: str) -> None:
    reader.append(Reader(point / "f", how))
    stacko("cutover-stackpoint", "p", "b")
    before = snapshot(root)
    pid = str(reader[0].proc.pid)
    for argv in (["fallback-stackpoint", "p"], ["set-stackpoint-instance", "p", "a"],
                 ["cutover-stackpoint", "p", "a"], ["delete-stackpoint-instance", "p", "a"],
                 ["prune-stackpoint", "p", "--keep", "0"]):
        r = stacko(*argv, rc=1)
        assert f"{pid} (python" in r.stderr and "'a'" in r.stderr, r.stderr
        assert snapshot(root) == before
    assert (point / "f").read_text() == "B\n"
    # a third instance is fine meanwhile, and switching back to b too
    populate(stacko, "c", {"f": "C\n"}, parent="a")
    stacko("cutover-stackpoint", "p", "c")
    stacko("set-stackpoint-instance", "p", "b")
    reader[0].stop()
    stacko("fallback-stackpoint", "p")
    assert (point / "f").read_text() == "C\n"
    stacko("set-stackpoint-instance", "p", "a")
    assert (point / "f").read_text() == "A\n"
    # records of mounts nobody holds are dropped along the way
    stacko("cutover-stackpoint", "p", "b")
    assert [d["image"] for d in state(root).get("detached", [])] == ["a"]


@needs_gapless
def test_records_from_another_boot_or_a_reused_device_do_not_block(
        stacko: Runner, root: Path, point: Path, default_backend: None) -> None:
    stacko("cutover-stackpoint", "p", "b")
    current = os.stat(point).st_dev
    data = json.loads((root / "stackpoints.json").read_text())
    # a's old device number now belongs to b's mount; and one from another boot
    data["stackpoints"]["p"]["detached"] = [
        {"image": "a", "device": current, "boot_id": overlay.boot_id()},
        {"image": "a", "device": os.stat("/proc/self/cwd").st_dev, "boot_id": "an-earlier-boot"}]
    (root / "stackpoints.json").write_text(json.dumps(data))
    stacko("fallback-stackpoint", "p")
    assert (point / "f").read_text() == "A\n"
    assert "detached" not in state(root) or all(d["image"] != "a" for d in state(root)["detached"])


@needs_gapless
@pytest.mark.parametrize("how", ["fd", "mmap"])
def test_a_reused_device_number_held_on_another_detached_mount_does_not_block(
        stacko: Runner, root: Path, point: Path, reader: list, workdir: Path,
        default_backend: None, how: str) -> None:
    """a's detached mount is gone and its device number now belongs to another
    overlay (another root's, say), itself detached and held by a process: that
    process holds another mount's files, not a's (it was refused: device numbers
    alone named the mount)."""
    stacko("cutover-stackpoint", "p", "b")            # nobody holds a's mount: it is freed
    other = workdir / "other"
    for d in ("lower", "upper", "work", "mnt"):
        (other / d).mkdir(parents=True)
    (other / "upper" / "f").write_text("A\n")        # the same name as a's file
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={other}/lower,upperdir={other}/upper,workdir={other}/work",
                    str(other / "mnt")], check=True)
    try:
        reader.append(Reader(other / "mnt" / "f", how))
        device = os.stat(other / "mnt").st_dev
    finally:
        subprocess.run(["umount", "-l", str(other / "mnt")], check=True)
    data = json.loads((root / "stackpoints.json").read_text())
    data["stackpoints"]["p"]["detached"] = [
        {"image": "a", "device": device, "boot_id": overlay.boot_id()}]
    (root / "stackpoints.json").write_text(json.dumps(data))
    stacko("fallback-stackpoint", "p")
    assert (point / "f").read_text() == "A\n"
    assert reader[0].read().startswith("A")           # it held the other mount all along


# --- failures leave everything as it was ----------------------------------------------
def test_a_broken_new_instance_leaves_the_old_one_mounted(stacko: Runner, root: Path,
                                                          backend: str, point: Path) -> None:
    stacko("new-stackpoint-instance", "p", "b")
    inst = [i for i in state(root)["instances"] if i["image"] == "b"][0]
    os.rename(root / "l" / inst["layer"], root / "moved-away")     # the upper is gone
    before = snapshot(root)
    r = stacko("set-stackpoint-instance", "p", "b", rc=1)
    assert "cannot" in r.stderr
    assert snapshot(root) == before
    assert (point / "f").read_text() == "A\n"
    assert len(entries(point)) == 1
    os.rename(root / "moved-away", root / "l" / inst["layer"])
    stacko("set-stackpoint-instance", "p", "b")
    assert (point / "f").read_text() == "B\n"


def _fail(*args: object, **kwargs: object) -> None:
    raise MountFailed("injected failure", errno=5)


@needs_gapless
@pytest.mark.parametrize("where", ["make_overlay", "attach_beneath", "save"])
def test_injected_failures_change_nothing(stacko: Runner, root: Path, point: Path,
                                          monkeypatch: pytest.MonkeyPatch, default_backend: None,
                                          where: str) -> None:
    before = snapshot(root)
    if where == "make_overlay":
        monkeypatch.setattr(mountapi, "make_overlay", _fail)
    elif where == "attach_beneath":
        monkeypatch.setattr(mountapi.PreparedOverlay, "attach_beneath", _fail)
    else:
        monkeypatch.setattr(Store, "save_stackpoints", _fail)
    with pytest.raises(StackoError):
        stackpoints.cutover(Store(str(root)), "p", "b")
    monkeypatch.undo()
    after = snapshot(root)
    assert after == before
    assert (point / "f").read_text() == "A\n"
    assert len(entries(point)) == 1
    assert state(root)["current"] == "a"
    stacko("cutover-stackpoint", "p", "b")
    assert (point / "f").read_text() == "B\n"


@needs_gapless
def test_injected_failure_after_the_first_switch(stacko: Runner, root: Path, point: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 default_backend: None) -> None:
    """Fallback onto an existing instance: nothing is created, nothing lost."""
    stacko("cutover-stackpoint", "p", "b")
    (point / "kept").write_text("k")
    before = snapshot(root)
    monkeypatch.setattr(mountapi.PreparedOverlay, "attach_beneath", _fail)
    with pytest.raises(MountFailed, match="injected"):
        stackpoints.fallback(Store(str(root)), "p")
    monkeypatch.undo()
    assert snapshot(root) == before
    assert (point / "kept").read_text() == "k"
    stacko("fallback-stackpoint", "p")
    assert (point / "f").read_text() == "A\n"
