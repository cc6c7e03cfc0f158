"""diff-stackpoint, commit-stackpoint and prune-stackpoint (stacko/changes.py)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import Runner, populate, snapshot
from stacko import changes

BASE = {"etc/a": "1", "etc/b": "2", "etc/keep": "k", "dir/x": "x", "dir/sub/y": "y",
        "gone/z": "z", "usr/lib/deep/file": "d"}


# --- unit tests: no root, no mounts -------------------------------------------------------
def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def test_show_path_escapes_what_would_break_a_line() -> None:
    assert changes.show_path("/etc/passwd") == "/etc/passwd"
    assert changes.show_path("/a\nb") == "/a\\nb"
    assert changes.show_path("/a\\b") == "/a\\\\b"
    assert changes.show_path(os.fsdecode(b"/caf\xe9")) == "/caf\\xe9"
    assert changes.show_path("/café ok") == "/café ok"


def test_look_below_follows_overlayfs_lookup(tmp_path: Path) -> None:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    for d in (top / "d", bottom / "d", bottom / "f"):
        d.mkdir(parents=True)
    (bottom / "d" / "x").write_text("x")
    (top / "g").write_text("file hides the directory below")
    (bottom / "g").mkdir()
    if os.geteuid() == 0:
        whiteout(top / "f")
        assert changes.look_below((str(top), str(bottom)), "f").st is None
    below = changes.look_below((str(top), str(bottom)), "d")
    assert below.dirs == (str(top / "d"), str(bottom / "d"))
    assert changes.names_below(below.dirs) == ["x"]
    g = changes.look_below((str(top), str(bottom)), "g")
    assert g.st is not None and stat.S_ISREG(g.st.st_mode) and g.dirs == ()
    assert changes.look_below((str(top), str(bottom)), "missing") == changes.Below()


# --- diff -------------------------------------------------------------------------------------
def change_files(merged: Path) -> None:
    """What an admin does on a running system: add, change, delete, replace a directory."""
    (merged / "etc/new").write_text("new")
    (merged / "etc/a").write_text("11")
    (merged / "etc/b").unlink()
    os.chmod(merged / "etc/keep", 0o600)
    shutil.rmtree(merged / "dir")
    (merged / "dir").mkdir()
    (merged / "dir/x").write_text("X")
    (merged / "dir/fresh").write_text("f")
    shutil.rmtree(merged / "gone")
    (merged / "usr/lib/deep/file").write_text("D")


EXPECTED = ["C /dir", "A /dir/fresh", "D /dir/sub", "C /dir/x",
            "C /etc", "C /etc/a", "D /etc/b", "C /etc/keep", "A /etc/new",
            "D /gone", "C /usr/lib/deep/file"]


@pytest.fixture
def changed(stacko: Runner) -> Path:
    """Stackpoint p on image app (stacked on os), mounted, with change_files() applied."""
    populate(stacko, "os", BASE)
    populate(stacko, "app", {"app/bin": "b"}, parent="os")
    stacko("new-stackpoint", "p", "app")
    merged = Path(stacko("mount-stackpoint", "p").out)
    change_files(merged)
    return merged


@pytest.mark.mounts
def test_diff_lists_added_changed_deleted_and_replaced_mounted_or_not(stacko: Runner,
                                                                      changed: Path) -> None:
    mounted = stacko("diff-stackpoint", "p").stdout.splitlines()
    assert mounted == EXPECTED
    stacko("umount-stackpoint", "p")
    assert stacko("diff-stackpoint", "p").stdout.splitlines() == EXPECTED


@pytest.mark.mounts
def test_diff_of_an_untouched_instance_is_empty(stacko: Runner) -> None:
    populate(stacko, "os", BASE)
    stacko("new-stackpoint", "p", "os")
    assert stacko("diff-stackpoint", "p").stdout == ""
    merged = Path(stacko("mount-stackpoint", "p").out)
    (merged / "etc/a").read_text()            # reading copies nothing up
    assert stacko("diff-stackpoint", "p").stdout == ""


@pytest.mark.mounts
def test_diff_sees_a_deletion_of_a_file_from_a_lower_image(stacko: Runner) -> None:
    populate(stacko, "os", BASE)
    populate(stacko, "app", {"app/bin": "b"}, parent="os")
    stacko("new-stackpoint", "p", "app")
    merged = Path(stacko("mount-stackpoint", "p").out)
    (merged / "usr/lib/deep/file").unlink()
    (merged / "app/bin").unlink()
    assert stacko("diff-stackpoint", "p").stdout.splitlines() == [
        "C /app", "D /app/bin", "C /usr/lib/deep", "D /usr/lib/deep/file"]


def test_diff_errors(stacko: Runner) -> None:
    stacko("diff-stackpoint", "nope", rc=1)
    stacko("diff-stackpoint", "../x", rc=2)


# --- commit -------------------------------------------------------------------------------
def private_xattrs(layer: Path) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for directory, dirs, files in os.walk(layer):
        for name in [""] + dirs + files:
            path = os.path.join(directory, name) if name else directory
            attrs = [a for a in os.listxattr(path, follow_symlinks=False)
                     if a.startswith("trusted.overlay.")]
            if attrs:
                found[os.path.relpath(path, layer)] = sorted(attrs)
    return found


def points_json(stacko: Runner) -> Dict[str, dict]:
    return {p["name"]: p for p in json.loads(stacko("list-stackpoints", "--json").out)}


def images_json(stacko: Runner) -> Dict[str, dict]:
    return {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}


def tree(top: Path) -> Dict[str, str]:
    """Every path under top with its content (files) or '/' (directories) and mode."""
    seen = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(directory) / name
            rel = str(path.relative_to(top))
            mode = oct(path.lstat().st_mode)
            seen[rel] = (path.read_text() if path.is_file() else "/") + " " + mode
    return seen


@pytest.mark.mounts
def test_commit_moves_the_layer_and_another_stackpoint_sees_the_same_files(
        stacko: Runner, changed: Path, root: Path) -> None:
    before = tree(changed)
    with open(root / "stackpoints.json") as f:
        old_layer = json.load(f)["stackpoints"]["p"]["instances"][0]["layer"]
    inode = os.stat(root / "l" / old_layer / "etc/a").st_ino

    stacko("commit-stackpoint", "p", "snap")

    # The image owns the very directory the instance wrote: nothing was copied.
    imgs = images_json(stacko)
    assert imgs["snap"]["parent"] == "app"
    assert imgs["snap"]["layer"] == str(root / "l" / old_layer)
    assert os.stat(root / "l" / old_layer / "etc/a").st_ino == inode
    # Kernel-private attributes are gone, the opaque marker stays, whiteouts stay.
    left = private_xattrs(root / "l" / old_layer)
    assert left == {"dir": ["trusted.overlay.opaque"]}, left
    assert stat.S_ISCHR(os.lstat(root / "l" / old_layer / "etc/b").st_mode)

    # The stackpoint: remounted on a fresh, empty instance of snap; same files.
    stacko("is-stackpoint-mounted", "p")
    p = points_json(stacko)["p"]
    assert p["current"] == "snap" and [i["image"] for i in p["instances"]] == ["snap"]
    assert p["history"] == []
    assert tree(changed) == before
    assert stacko("diff-stackpoint", "p").stdout == ""

    # Another stackpoint on the committed image sees the changes, deletions included.
    stacko("new-stackpoint", "q", "snap")
    other = Path(stacko("mount-stackpoint", "q").out)
    assert tree(other) == before
    assert not (other / "etc/b").exists() and not (other / "gone").exists()
    assert not (other / "dir/sub").exists()
    assert (other / "dir/x").read_text() == "X"
    assert stacko("diff-stackpoint", "q").stdout == ""


@pytest.mark.mounts
def test_commit_of_an_unmounted_stackpoint_leaves_it_unmounted(stacko: Runner,
                                                               changed: Path) -> None:
    stacko("umount-stackpoint", "p")
    stacko("commit-stackpoint", "p", "snap")
    assert points_json(stacko)["p"]["mounted"] is False
    assert points_json(stacko)["p"]["current"] == "snap"
    # ... and commits stack: a second commit goes on top of the first.
    merged = Path(stacko("mount-stackpoint", "p").out)
    (merged / "etc/second").write_text("2")
    assert stacko("diff-stackpoint", "p").stdout.splitlines() == ["C /etc", "A /etc/second"]
    stacko("commit-stackpoint", "p", "snap2")
    assert images_json(stacko)["snap2"]["parent"] == "snap"
    assert (merged / "etc/second").read_text() == "2"
    assert stacko("list-images", "--tree").stdout.splitlines()[-1].endswith("snap2")


@pytest.mark.mounts
def test_commit_keeps_the_history(stacko: Runner) -> None:
    populate(stacko, "v1", {"f": "1"})
    populate(stacko, "v2", {"f": "2"})
    stacko("new-stackpoint", "p", "v1")
    stacko("cutover-stackpoint", "p", "v2")
    stacko("commit-stackpoint", "p", "v2-local")
    p = points_json(stacko)["p"]
    assert p["history"] == ["v1"]
    assert sorted(i["image"] for i in p["instances"]) == ["v1", "v2-local"]
    merged = Path(stacko("fallback-stackpoint", "p").out)
    assert (merged / "f").read_text() == "1"


@pytest.mark.mounts
def test_commit_refused_while_busy_changes_nothing(stacko: Runner, changed: Path,
                                                  root: Path) -> None:
    holder = subprocess.Popen(["sleep", "600"], cwd=changed / "etc")
    try:
        before = snapshot(root)
        r = stacko("commit-stackpoint", "p", "snap", rc=1)
        assert "busy" in r.stderr and f"{holder.pid} (sleep)" in r.stderr, r.stderr
        assert snapshot(root) == before
        stacko("is-stackpoint-mounted", "p")
        assert stacko("diff-stackpoint", "p").stdout.splitlines() == EXPECTED
    finally:
        holder.kill()
        holder.wait()
    stacko("commit-stackpoint", "p", "snap")


@pytest.mark.mounts
def test_commit_refusals(stacko: Runner, changed: Path, root: Path) -> None:
    before = snapshot(root)
    stacko("commit-stackpoint", "p", "os", rc=1)          # the image exists already
    stacko("commit-stackpoint", "nope", "snap", rc=1)
    stacko("commit-stackpoint", "p", "bad/name", rc=2)
    stacko("commit-stackpoint", "p", "", rc=2)
    assert snapshot(root) == before


@pytest.mark.mounts
def test_a_failed_commit_puts_everything_back(stacko: Runner, changed: Path, root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The second metadata write fails: images.json, the layers and the mount are
    as they were (the stripped xattrs were caches only)."""
    from stacko import cli
    from stacko.errors import StackoError
    from stacko.state import Store

    before = snapshot(root)

    def failing(self: Store, points: dict) -> None:
        if "snap" in {p.current for p in points.values()}:
            raise StackoError("injected failure")
        real(self, points)

    real = Store.save_stackpoints
    monkeypatch.setattr(Store, "save_stackpoints", failing)
    assert cli.main(["--root", str(root), "commit-stackpoint", "p", "snap"]) == 1
    monkeypatch.undo()
    assert snapshot(root) == before
    assert stacko("diff-stackpoint", "p").stdout.splitlines() == EXPECTED
    assert (changed / "etc/a").read_text() == "11"


def test_interrupted_commits_are_recognised() -> None:
    from stacko.records import Image, Instance, Stackpoint

    imgs = {"app": Image("app", "aaaaa"), "snap": Image("snap", "bbbbb", "app")}
    points = {"p": Stackpoint("p", "app", instances=(Instance("app", "bbbbb"),)),
              "q": Stackpoint("q", "app", instances=(Instance("app", "ccccc"),))}
    assert changes.interrupted_commits(imgs, points) == [("p", "snap", "bbbbb")]


# --- prune -------------------------------------------------------------------------------------
@pytest.mark.mounts
def test_prune_keeps_the_newest_and_names_what_it_deletes(stacko: Runner, root: Path) -> None:
    for v in ("v1", "v2", "v3", "v4", "spare"):
        populate(stacko, v, {"f": v})
    stacko("new-stackpoint", "p", "v1")
    for v in ("v2", "v3", "v4"):
        stacko("cutover-stackpoint", "p", v)
    stacko("new-stackpoint-instance", "p", "spare")     # never current: not pruned
    assert points_json(stacko)["p"]["history"] == ["v1", "v2", "v3"]
    layers_before = set(os.listdir(root / "l"))

    r = stacko("prune-stackpoint", "p", "--keep", "1")
    assert r.stdout == ""
    assert "v1" in r.stderr and "v2" in r.stderr and "v3" not in r.stderr
    p = points_json(stacko)["p"]
    assert p["history"] == ["v3"] and p["current"] == "v4"
    assert sorted(i["image"] for i in p["instances"]) == ["spare", "v3", "v4"]
    assert len(layers_before - set(os.listdir(root / "l"))) == 2

    stacko("prune-stackpoint", "p", "--keep", "5")        # nothing beyond: no-op
    assert points_json(stacko)["p"]["history"] == ["v3"]
    merged = Path(stacko("fallback-stackpoint", "p").out)
    assert (merged / "f").read_text() == "v3"
    stacko("prune-stackpoint", "p", "--keep", "0")
    p = points_json(stacko)["p"]
    assert p["history"] == [] and p["current"] == "v3"    # never the current one
    stacko("fallback-stackpoint", "p", rc=1)


def test_prune_usage(stacko: Runner) -> None:
    stacko("prune-stackpoint", "p", rc=2)                # --keep is required
    stacko("prune-stackpoint", "p", "--keep", "-1", rc=2)
    stacko("prune-stackpoint", "p", "--keep", "x", rc=2)
    stacko("prune-stackpoint", "nope", "--keep", "1", rc=1)


@pytest.mark.mounts
def test_diff_and_commit_of_a_deeply_nested_tree(stacko: Runner, root: Path) -> None:
    """600 levels: deeper than Python's recursion limit allows a recursive walk."""
    populate(stacko, "os", {"etc/a": "1"})
    stacko("new-stackpoint", "p", "os")
    merged = Path(stacko("mount-stackpoint", "p").out)
    deep = "/".join(["d"] * 600)
    try:
        (merged / deep).mkdir(parents=True)
        (merged / deep / "file").write_text("deep")
        lines = stacko("diff-stackpoint", "p").stdout.splitlines()
        assert len(lines) == 601 and lines[0] == "A /d" and lines[-1] == f"A /{deep}/file"
        stacko("commit-stackpoint", "p", "snap")
        assert (merged / deep / "file").read_text() == "deep"
        assert stacko("diff-stackpoint", "p").stdout == ""
    finally:
        stacko("umount-stackpoint", "p")
        # rm(1) removes any depth; pytest's own cleanup (shutil.rmtree) recurses per level.
        subprocess.run(["rm", "-rf", str(root)], check=True)
