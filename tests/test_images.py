"""Image commands on real overlayfs mounts."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import populate, snapshot

pytestmark = pytest.mark.mounts


def is_mount(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path.replace(" ", "\\040") for line in f)


def test_edit_writes_land_in_the_image_and_close_unmounts(stacko, root) -> None:
    stacko("new-image", "base")
    directory = stacko("edit-image", "base").out
    assert directory == str(root / "edit" / "base")
    assert is_mount(directory)
    (Path(directory) / "hello").write_text("hi")
    assert stacko("edit-image", "base").out == directory      # already open: same answer
    assert stacko("close-image", "base").stdout == ""
    assert not is_mount(directory)
    assert stacko("close-image", "base").stdout == ""         # a no-op when not mounted
    ro = stacko("edit-image", "base", "--read-only").out
    assert (Path(ro) / "hello").read_text() == "hi"
    with pytest.raises(OSError):
        (Path(ro) / "new").write_text("x")
    stacko("close-image", "base")


def test_child_sees_parent_and_its_changes_stay_in_its_layer(stacko, root) -> None:
    populate(stacko, "base", {"etc/conf": "v1", "keep": "k"})
    stacko("new-image", "child", "base")
    d = Path(stacko("edit-image", "child").out)
    assert (d / "etc/conf").read_text() == "v1"
    (d / "etc/conf").write_text("v2")
    (d / "keep").unlink()
    stacko("close-image", "child")
    ro = Path(stacko("edit-image", "base", "--read-only").out)
    assert (ro / "etc/conf").read_text() == "v1" and (ro / "keep").exists()
    stacko("close-image", "base")
    ro = Path(stacko("edit-image", "child", "--read-only").out)
    assert (ro / "etc/conf").read_text() == "v2" and not (ro / "keep").exists()
    stacko("close-image", "child")


def test_editing_a_stacked_on_image_is_refused(stacko, root) -> None:
    populate(stacko, "base", {"f": "1"})
    stacko("new-image", "child", "base")
    before = snapshot(root)
    r = stacko("edit-image", "base", rc=1)
    assert "child" in r.stderr and r.stdout == ""
    assert snapshot(root) == before
    stacko("delete-image", "child")
    stacko("new-stackpoint", "p", "base")
    before = snapshot(root)
    assert "'p'" in stacko("edit-image", "base", rc=1).stderr
    assert snapshot(root) == before
    # --read-only is always allowed
    assert (Path(stacko("edit-image", "base", "--read-only").out) / "f").read_text() == "1"
    stacko("close-image", "base")


def test_nothing_stacks_on_an_image_open_for_writing(stacko, root) -> None:
    stacko("new-image", "base")
    stacko("edit-image", "base")
    before = snapshot(root)
    assert "close-image base" in stacko("new-image", "child", "base", rc=1).stderr
    assert "close-image base" in stacko("new-stackpoint", "p", "base", rc=1).stderr
    assert "close-image" in stacko("delete-image", "base", rc=1).stderr
    assert "close-image" in stacko("edit-image", "base", "--read-only", rc=1).stderr
    assert snapshot(root) == before
    stacko("close-image", "base")


def test_delete_refusals_leave_everything_as_it_was(stacko, root) -> None:
    populate(stacko, "base", {"f": "1"})
    stacko("new-image", "child", "base")
    stacko("new-stackpoint", "p", "child")
    before = snapshot(root)
    assert "child" in stacko("delete-image", "base", rc=1).stderr
    assert "'p'" in stacko("delete-image", "child", rc=1).stderr
    assert snapshot(root) == before
    stacko("delete-stackpoint", "p")
    stacko("delete-image", "child")
    layer = json.loads((root / "images.json").read_text())["images"]["base"]["layer"]
    stacko("delete-image", "base")
    assert not (root / "l" / layer).exists() and not (root / "w" / layer).exists()
    assert stacko("list-images").stdout == ""


def test_close_of_a_busy_image_names_the_process(stacko, root) -> None:
    stacko("new-image", "base")
    d = stacko("edit-image", "base").out
    holder = subprocess.Popen(["sleep", "60"], cwd=d)
    try:
        time.sleep(0.2)
        r = stacko("close-image", "base", rc=1)
        assert f"{holder.pid} (sleep)" in r.stderr
        assert is_mount(d)
    finally:
        holder.kill()
        holder.wait()
    stacko("close-image", "base")
    assert not is_mount(d)


def test_list_images_plain_tree_and_json(stacko, root) -> None:
    for name, parent in (("base", None), ("apps-1.0", "base"), ("apps-2.0", "base"),
                         ("extra", "apps-1.0"), ("other", None)):
        stacko("new-image", name, *([parent] if parent else []))
    stacko("new-stackpoint", "p", "apps-2.0")
    assert stacko("list-images").out.splitlines() == ["apps-1.0", "apps-2.0", "base", "extra",
                                                      "other"]
    assert stacko("list-images", "--tree").out.splitlines() == [
        "base", "├── apps-1.0", "│   └── extra", "└── apps-2.0", "other"]
    stacko("edit-image", "extra")
    data = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert data["base"]["children"] == ["apps-1.0", "apps-2.0"] and data["base"]["parent"] is None
    assert data["apps-2.0"]["instances"] == ["p"] and data["apps-1.0"]["instances"] == []
    assert data["extra"]["mounted"] is True and data["base"]["mounted"] is False
    assert data["extra"]["parent"] == "apps-1.0"
    stacko("close-image", "extra")


@pytest.mark.parametrize("corrupt", ["images.json", "stackpoints.json"])
def test_every_listing_of_images_reports_corrupt_metadata(stacko, root, corrupt: str) -> None:
    """The plain listing, which needs only names, reads what the others read."""
    stacko("new-image", "base")
    stacko("new-stackpoint", "p", "base")
    (root / corrupt).write_text('{"version": 1, "images": {"base": 7}, "stackpoints": []}')
    for flags in ((), ("--tree",), ("--json",)):
        r = stacko("list-images", *flags, rc=1)
        assert corrupt in r.stderr and r.out == ""


def test_verbose_logs_external_commands_to_stderr(stacko) -> None:
    stacko("new-image", "base")
    r = stacko("-v", "edit-image", "base")
    assert "+ " in r.stderr and "mount" in r.stderr
    assert r.out.endswith("/edit/base")          # stdout: only the data
    r = stacko("close-image", "base", "-v")
    assert "umount" in r.stderr and r.stdout == ""


def test_editing_an_imported_image_forgets_its_layer_digest(stacko, root, workdir) -> None:
    import tarfile
    archive = workdir / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        import io
        tar.addfile(info, io.BytesIO(b"hi"))
    stacko("import-image", "imported", str(archive))
    assert json.loads((root / "images.json").read_text())["images"]["imported"].get("diff_id")
    stacko("edit-image", "imported")
    stacko("close-image", "imported")
    assert not json.loads((root / "images.json").read_text())["images"]["imported"].get("diff_id")
