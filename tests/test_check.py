"""stacko check [--repair]: every mismatch a killed command (or an admin) can leave
is reported, exit 1; --repair fixes it without losing user data, exit 0, and a
second check finds nothing."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import Runner, populate, run_stacko

pytestmark = pytest.mark.mounts


def clean(stacko: Runner) -> None:
    r = stacko("check")
    assert r.stdout == "", r.stdout


def repaired(stacko: Runner, *words: str) -> str:
    """check finds the problem (exit 1, naming words), --repair fixes it, then clean."""
    found = stacko("check", rc=1).stdout
    for w in words:
        assert w in found, found
    fixed = stacko("check", "--repair").stdout
    assert "repaired:" in fixed and "not repaired" not in fixed, fixed
    clean(stacko)
    return fixed


def layer_of(root: Path, image: str) -> str:
    return json.loads((root / "images.json").read_text())["images"][image]["layer"]


def instance_layer(root: Path, point: str, image: str) -> str:
    data = json.loads((root / "stackpoints.json").read_text())["stackpoints"][point]
    return next(i["layer"] for i in data["instances"] if i["image"] == image)


@pytest.fixture
def world(stacko: Runner, root: Path) -> Runner:
    """Two images, a mounted stackpoint: a healthy root."""
    populate(stacko, "base", {"etc/os": "base"})
    populate(stacko, "app", {"app/bin": "1"}, parent="base")
    stacko("new-stackpoint", "sp", "app")
    stacko("mount-stackpoint", "sp")
    return stacko


def test_healthy_root_is_clean(world: Runner, root: Path) -> None:
    clean(world)
    assert world("check", "--repair").stdout == ""


def test_missing_root_is_clean(workdir: Path) -> None:
    r = run_stacko(workdir / "nothing", "check")
    assert r.stdout == "" and not (workdir / "nothing").exists()


def test_empty_unnamed_layer_is_removed(world: Runner, root: Path) -> None:
    (root / "l" / "zzzzz").mkdir()
    (root / "w" / "zzzzz" / "work").mkdir(parents=True)
    fixed = repaired(world, "zzzzz", "no record names it")
    assert "removed" in fixed
    assert not (root / "l" / "zzzzz").exists() and not (root / "w" / "zzzzz").exists()


def test_unnamed_layer_with_files_is_kept(world: Runner, root: Path) -> None:
    (root / "l" / "yyyyy" / "data").mkdir(parents=True)
    (root / "l" / "yyyyy" / "data" / "precious").write_text("keep me")
    (root / "w" / "yyyyy").mkdir()
    fixed = repaired(world, "yyyyy", "holds files")
    kept = root / "orphans" / "yyyyy"
    assert str(kept) in fixed
    assert (kept / "data" / "precious").read_text() == "keep me"
    assert not (root / "w" / "yyyyy").exists()


def test_workdir_without_layer_is_removed(world: Runner, root: Path) -> None:
    (root / "w" / "xxxxx" / "work").mkdir(parents=True)
    os.chmod(root / "w" / "xxxxx" / "work", 0)       # as overlayfs leaves it
    repaired(world, "xxxxx", "has no layer")
    assert not (root / "w" / "xxxxx").exists()


def test_missing_workdir_is_made(world: Runner, root: Path) -> None:
    world("umount-stackpoint", "sp")
    layer = instance_layer(root, "sp", "app")
    shutil.rmtree(root / "w" / layer)
    repaired(world, "workdir", layer)
    world("mount-stackpoint", "sp")


def test_missing_layer_is_reported_not_repaired(world: Runner, root: Path) -> None:
    world("new-image", "lost")
    layer = layer_of(root, "lost")
    os.rmdir(root / "l" / layer)
    assert "image 'lost'" in world("check", rc=1).stdout
    r = world("check", "--repair", rc=1)
    assert "not repaired" in r.stdout and "is missing" in r.stdout
    assert "lost" in world("list-images").stdout.split()     # the record is kept


def test_staging_leftovers_are_removed(world: Runner, root: Path) -> None:
    leftover = root / "tmp" / "import-999999-deadbeef" / "layer-0"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("half")
    repaired(world, "staging")
    assert os.listdir(root / "tmp") == []


def test_edit_mount_left_open_is_closed(world: Runner, root: Path) -> None:
    world("new-image", "draft", "base")
    directory = Path(world("edit-image", "draft").out)
    (directory / "new").write_text("written")
    repaired(world, "open for editing", "draft")
    assert not os.path.ismount(directory)
    # Nothing written was lost: it is in the image.
    world("new-stackpoint", "look", "draft")
    assert (Path(world("mount-stackpoint", "look").out) / "new").read_text() == "written"


def test_stackpoint_on_a_stale_instance_is_remounted(world: Runner, root: Path) -> None:
    world("new-image", "other", "base")
    world("new-stackpoint-instance", "sp", "other")
    # What a switch killed between recording and mounting leaves: the record says
    # "other", the kernel has "app" mounted.
    path = root / "stackpoints.json"
    data = json.loads(path.read_text())
    data["stackpoints"]["sp"]["current"] = "other"
    data["stackpoints"]["sp"]["history"] = ["app"]
    path.write_text(json.dumps(data))
    fixed = repaired(world, "'sp'", "current instance")
    assert "mounted" in fixed
    listing = json.loads(world("list-stackpoints", "--json").stdout)[0]
    assert listing["mounted_image"] == "other"
    directory = Path(world("get-stackpoint-dir", "sp").out)
    assert (directory / "etc" / "os").read_text() == "base"
    assert not (directory / "app").exists()


def test_stale_mount_of_a_forgotten_stackpoint(world: Runner, root: Path) -> None:
    directory = Path(world("get-stackpoint-dir", "sp").out)
    layer = instance_layer(root, "sp", "app")
    (directory / "mine").write_text("user data")
    path = root / "stackpoints.json"
    path.write_text(json.dumps({"version": 1, "stackpoints": {}}))
    fixed = repaired(world, "stale mount", layer)
    assert not os.path.ismount(directory)
    # The instance held user data: kept, not removed.
    assert (root / "orphans" / layer / "mine").read_text() == "user data"
    assert "orphans" in fixed


def test_interrupted_commit_is_finished(world: Runner, root: Path) -> None:
    directory = Path(world("get-stackpoint-dir", "sp").out)
    (directory / "change").write_text("committed")
    world("umount-stackpoint", "sp")
    layer = instance_layer(root, "sp", "app")
    # A commit killed between its two metadata writes.
    path = root / "images.json"
    data = json.loads(path.read_text())
    data["images"]["app2"] = {"name": "app2", "layer": layer, "parent": "app", "created": ""}
    path.write_text(json.dumps(data))
    repaired(world, "interrupted commit", "app2")
    listing = json.loads(world("list-stackpoints", "--json").stdout)[0]
    assert listing["current"] == "app2"
    assert instance_layer(root, "sp", "app2") != layer
    world("mount-stackpoint", "sp")
    assert (directory / "change").read_text() == "committed"
    assert (directory / "app" / "bin").read_text() == "1"


def test_several_problems_at_once(world: Runner, root: Path) -> None:
    (root / "l" / "aaaaa").mkdir()
    (root / "w" / "bbbbb").mkdir()
    (root / "tmp" / "export-999999-x").mkdir(parents=True)
    found = world("check", rc=1).stdout.splitlines()
    assert len(found) == 3, found
    fixed = world("check", "--repair").stdout.splitlines()
    assert len(fixed) == 3 and all("repaired:" in line for line in fixed), fixed
    clean(world)


def test_corrupt_metadata_is_an_error_not_a_repair(world: Runner, root: Path) -> None:
    (root / "images.json").write_text("{not json")
    r = world("check", "--repair", rc=1)
    assert "images.json" in r.stderr
    assert (root / "images.json").read_text() == "{not json"


def test_check_takes_the_lock(world: Runner, root: Path) -> None:
    import fcntl
    fd = os.open(root / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = world("check", rc=1, env={"STACKO_LOCK_TIMEOUT": "0.3"})
        assert "lock" in r.stderr
    finally:
        os.close(fd)
