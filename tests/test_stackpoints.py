"""Stackpoint commands on real overlayfs mounts, by each mount backend."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import populate, snapshot

pytestmark = pytest.mark.mounts


@pytest.fixture(autouse=True, params=["", "command"], ids=["in-process", "command"])
def mount_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on each mount backend (STACKO_MOUNT_API): the
    in-process default, and mount(8) with umount(8)."""
    if request.param:
        monkeypatch.setenv("STACKO_MOUNT_API", request.param)
    else:
        monkeypatch.delenv("STACKO_MOUNT_API", raising=False)
    return request.param


def unmount_everything(root: Path, *extra: Path) -> None:
    """What a reboot does to stacko: every mount gone, the files on disk kept."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4].replace("\\040", " ") for line in f]
    for mp in reversed(points):
        if any(mp.startswith(str(p)) for p in (root,) + extra):
            subprocess.run(["umount", mp], check=True)


@pytest.fixture
def two_apps(stacko):
    populate(stacko, "base", {"etc/os": "debian", "lib/libc": "libc"})
    populate(stacko, "apps-1.0", {"app": "one"}, parent="base")
    populate(stacko, "apps-2.0", {"app": "two"}, parent="base")
    stacko("new-stackpoint", "sys", "apps-1.0")
    return stacko


def read(stacko, point: str, rel: str) -> str:
    return (Path(stacko("get-stackpoint-dir", point).out) / rel).read_text()


def test_mount_shows_the_stack_and_is_idempotent(two_apps, root) -> None:
    stacko = two_apps
    assert stacko("is-stackpoint-mounted", "sys", rc=1).stdout == ""
    d = stacko("mount-stackpoint", "sys").out
    assert d == str(root / "stackpoints" / "sys") == stacko("get-stackpoint-dir", "sys").out
    assert sorted(p.name for p in Path(d).iterdir()) == ["app", "etc", "lib"]
    assert read(stacko, "sys", "app") == "one"
    stacko("is-stackpoint-mounted", "sys", rc=0)
    assert stacko("mount-stackpoint", "sys").out == d            # already mounted: exit 0
    assert stacko("umount-stackpoint", "sys").stdout == ""
    stacko("is-stackpoint-mounted", "sys", rc=1)
    stacko("umount-stackpoint", "sys")                           # not mounted: exit 0


def test_copy_on_write_survives_a_reboot(two_apps, root) -> None:
    stacko = two_apps
    d = Path(stacko("mount-stackpoint", "sys").out)
    (d / "cow").write_text("mine")
    (d / "etc/os").write_text("changed")
    (d / "lib/libc").unlink()
    unmount_everything(root)
    stacko("is-stackpoint-mounted", "sys", rc=1)
    assert stacko("mount-stackpoint", "sys").out == str(d)
    assert (d / "cow").read_text() == "mine" and (d / "etc/os").read_text() == "changed"
    assert not (d / "lib/libc").exists()
    # the image itself is untouched
    ro = Path(stacko("edit-image", "base", "--read-only").out)
    assert (ro / "etc/os").read_text() == "debian" and (ro / "lib/libc").exists()
    stacko("close-image", "base")


def test_cutover_fallback_chain(two_apps, root) -> None:
    stacko = two_apps
    populate(stacko, "apps-3.0", {"app": "three"}, parent="base")
    d = Path(stacko("mount-stackpoint", "sys").out)
    (d / "note").write_text("on one")
    assert stacko("cutover-stackpoint", "sys", "apps-2.0").out == str(d)
    assert (d / "app").read_text() == "two" and not (d / "note").exists()
    (d / "note").write_text("on two")
    assert stacko("cutover-stackpoint-instance", "sys", "apps-3.0").out == str(d)
    assert (d / "app").read_text() == "three"
    points = json.loads(stacko("list-stackpoints", "--json").out)
    assert points[0]["history"] == ["apps-1.0", "apps-2.0"]
    assert points[0]["current"] == "apps-3.0" and points[0]["mounted"] is True
    # repeated fallbacks walk back, each with its own changes
    assert stacko("fallback-stackpoint", "sys").out == str(d)
    assert (d / "app").read_text() == "two" and (d / "note").read_text() == "on two"
    assert stacko("fallback-stackpoint-instance", "sys").out == str(d)
    assert (d / "app").read_text() == "one" and (d / "note").read_text() == "on one"
    # no earlier instance: exit 1 and nothing changed
    before = snapshot(root)
    assert "no earlier instance" in stacko("fallback-stackpoint", "sys", rc=1).stderr
    assert snapshot(root) == before
    assert (d / "note").read_text() == "on one"
    # forward again: the instance of apps-2.0 kept its changes
    stacko("cutover-stackpoint", "sys", "apps-2.0")
    assert (d / "note").read_text() == "on two"
    points = json.loads(stacko("list-stackpoints", "--json").out)
    assert points[0]["history"] == ["apps-1.0"]
    assert sorted(i["image"] for i in points[0]["instances"]) == ["apps-1.0", "apps-2.0", "apps-3.0"]


def test_cutover_of_an_unmounted_stackpoint_mounts_it(two_apps) -> None:
    stacko = two_apps
    d = stacko("cutover-stackpoint", "sys", "apps-2.0").out
    stacko("is-stackpoint-mounted", "sys")
    assert (Path(d) / "app").read_text() == "two"
    assert stacko("cutover-stackpoint", "sys", "apps-2.0").out == d    # to the current: no-op


@pytest.mark.parametrize("api", ["legacy", "auto"])     # umount(8), or umount2 itself
def test_busy_umount_names_the_process_and_lazy_detaches(two_apps, monkeypatch, api) -> None:
    monkeypatch.setenv("STACKO_MOUNT_API", api)
    stacko = two_apps
    d = stacko("mount-stackpoint", "sys").out
    holder = subprocess.Popen(["sleep", "60"], cwd=d)
    try:
        time.sleep(0.2)
        r = stacko("umount-stackpoint", "sys", rc=1)
        assert f"{holder.pid} (sleep)" in r.stderr and "--lazy" in r.stderr
        stacko("is-stackpoint-mounted", "sys", rc=0)
        stacko("umount-stackpoint", "sys", "--lazy")
        stacko("is-stackpoint-mounted", "sys", rc=1)
    finally:
        holder.kill()
        holder.wait()


def test_busy_cutover_keeps_the_old_instance(two_apps, root, monkeypatch) -> None:
    stacko = two_apps
    d = stacko("mount-stackpoint", "sys").out
    (Path(d) / "mine").write_text("x")
    holder = subprocess.Popen(["sleep", "60"], cwd=d)
    try:
        time.sleep(0.2)
        before = snapshot(root)
        r = stacko("cutover-stackpoint", "sys", "apps-2.0", rc=1,
                   env={"STACKO_GAPLESS": "0", "STACKO_MOUNT_API": "legacy"})
        assert str(holder.pid) in r.stderr
        assert snapshot(root) == before
        assert (Path(d) / "app").read_text() == "one" and (Path(d) / "mine").exists()
    finally:
        holder.kill()
        holder.wait()


def test_failed_mount_of_the_new_instance_puts_the_old_one_back(two_apps, root) -> None:
    stacko = two_apps
    d = Path(stacko("mount-stackpoint", "sys").out)
    # Break apps-2.0: its layer directory is gone, so its stack cannot mount.
    layer = json.loads((root / "images.json").read_text())["images"]["apps-2.0"]["layer"]
    (root / "l" / layer).rename(root / f"hidden-{layer}")
    before = snapshot(root)
    stacko("cutover-stackpoint", "sys", "apps-2.0", rc=1)
    after = snapshot(root)
    assert after == before
    assert (d / "app").read_text() == "one"
    (root / f"hidden-{layer}").rename(root / "l" / layer)


def test_set_and_delete_instances(two_apps, root) -> None:
    stacko = two_apps
    stacko("new-stackpoint-instance", "sys", "apps-2.0")
    points = json.loads(stacko("list-stackpoints", "--json").out)
    assert points[0]["current"] == "apps-1.0"
    d = Path(stacko("mount-stackpoint", "sys").out)
    stacko("set-stackpoint-instance", "sys", "apps-2.0")        # remounts
    assert (d / "app").read_text() == "two"
    stacko("umount-stackpoint", "sys")
    stacko("set-stackpoint-instance", "sys", "apps-1.0")        # not mounted: stays so
    stacko("is-stackpoint-mounted", "sys", rc=1)
    before = snapshot(root)
    assert "current" in stacko("delete-stackpoint-instance", "sys", "apps-1.0", rc=1).stderr
    assert "no instance" in stacko("set-stackpoint-instance", "sys", "base", rc=1).stderr
    assert snapshot(root) == before
    stacko("delete-stackpoint-instance", "sys", "apps-2.0")
    points = json.loads(stacko("list-stackpoints", "--json").out)
    assert [i["image"] for i in points[0]["instances"]] == ["apps-1.0"]
    assert points[0]["history"] == []
    assert len(snapshot(root)["l"]) == len(before["l"]) - 1


def test_delete_stackpoint(two_apps, root) -> None:
    stacko = two_apps
    stacko("mount-stackpoint", "sys")
    before = snapshot(root)
    assert "umount-stackpoint" in stacko("delete-stackpoint", "sys", rc=1).stderr
    assert snapshot(root) == before
    stacko("umount-stackpoint", "sys")
    stacko("delete-stackpoint", "sys")
    assert stacko("list-stackpoints").stdout == ""
    assert len(snapshot(root)["l"]) == 3                       # the three images
    assert not (root / "stackpoints" / "sys").exists()
    stacko("delete-image", "apps-1.0")                          # no longer in use


def test_path_option(two_apps, workdir, root) -> None:
    stacko = two_apps
    target = workdir / "srv data:x,y" / "app"
    stacko("new-stackpoint", "custom", "apps-2.0", "--path", str(target))
    assert stacko("get-stackpoint-dir", "custom").out == str(target)
    assert stacko("mount-stackpoint", "custom").out == str(target)
    assert (target / "app").read_text() == "two"
    stacko("umount-stackpoint", "custom")
    before = snapshot(root)
    for bad in ("/", str(root / "x"), str(target), str(target / "sub"), str(workdir / "srv data:x,y")):
        stacko("new-stackpoint", "bad", "base", "--path", bad, rc=2)
    assert snapshot(root) == before


def test_list_stackpoints_text(two_apps, root) -> None:
    stacko = two_apps
    assert stacko("list-stackpoints").out.splitlines()[1].split()[:3] == ["sys", "apps-1.0", "no"]
    stacko("cutover-stackpoint", "sys", "apps-2.0")
    head, row = stacko("list-stackpoints").out.splitlines()[:2]
    assert row.split()[:3] == ["sys", "apps-2.0", "yes"]
    # HISTORY, then LAST EVENT appended after it (columns start where their titles do)
    history = row[head.index("HISTORY"):head.index("LAST EVENT")].strip()
    assert history == "apps-1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cutover apps-1.0 -> apps-2.0",
                        row[head.index("LAST EVENT"):])


def test_reboot_after_cutover_mounts_the_new_instance(two_apps, root) -> None:
    stacko = two_apps
    stacko("cutover-stackpoint", "sys", "apps-2.0")
    unmount_everything(root)
    stacko("mount-stackpoint", "sys")
    assert read(stacko, "sys", "app") == "two"


def test_something_else_mounted_on_the_directory_is_not_taken_for_the_stackpoint(two_apps, root) -> None:
    stacko = two_apps
    d = stacko("get-stackpoint-dir", "sys").out
    subprocess.run(["mount", "-t", "tmpfs", "other", d], check=True)
    try:
        r = stacko("is-stackpoint-mounted", "sys", rc=1)
        assert "tmpfs" in r.stderr
        assert "tmpfs" in stacko("mount-stackpoint", "sys", rc=1).stderr
    finally:
        subprocess.run(["umount", d], check=True)


@pytest.mark.parametrize("api", ["legacy", "auto"])
def test_a_lazily_unmounted_instance_still_held_is_not_mounted_twice(two_apps, root, api) -> None:
    stacko = two_apps
    env = {"STACKO_MOUNT_API": api}
    d = stacko("mount-stackpoint", "sys", env=env).out
    holder = subprocess.Popen(["sleep", "60"], cwd=d)
    try:
        time.sleep(0.2)
        stacko("umount-stackpoint", "sys", "--lazy", env=env)
        stacko("is-stackpoint-mounted", "sys", rc=1)
        before = snapshot(root)
        r = stacko("mount-stackpoint", "sys", rc=1, env=env)
        assert f"{holder.pid} (sleep)" in r.stderr and "lazy" in r.stderr
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.wait()
    assert (Path(stacko("mount-stackpoint", "sys", env=env).out) / "app").read_text() == "one"
