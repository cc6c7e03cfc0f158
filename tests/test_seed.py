"""The seed README's example, word for word, as an admin runs it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.mounts


def test_the_seed_example_end_to_end(stacko, root) -> None:
    # create and populate a new image 'foundation-libs0.1'
    stacko("new-image", "foundation-libs0.1")
    d = Path(stacko("edit-image", "foundation-libs0.1").out)
    (d / "lib").mkdir()
    (d / "lib/libfoundation.so").write_text("foundation 0.1")
    stacko("close-image", "foundation-libs0.1")

    # another image 'apps-1.0' which "stacks" on image 'foundation-libs0.1'
    stacko("new-image", "apps-1.0", "foundation-libs0.1")
    d = Path(stacko("edit-image", "apps-1.0").out)
    assert (d / "lib/libfoundation.so").read_text() == "foundation 0.1"
    (d / "bin").mkdir()
    (d / "bin/app").write_text("app 1.0")
    stacko("close-image", "apps-1.0")

    # a stackpoint named 'system1fs', with a new instance of 'apps-1.0'
    stacko("new-stackpoint", "system1fs", "apps-1.0")
    sp = Path(stacko("mount-stackpoint", "system1fs").out)
    assert (sp / "bin/app").read_text() == "app 1.0"
    (sp / "var").mkdir()
    (sp / "var/data").write_text("written on 1.0")

    # <reboot>: every mount is gone, the state on disk stays
    subprocess.run(["umount", str(sp)], check=True)
    stacko("is-stackpoint-mounted", "system1fs", rc=1)
    assert stacko("mount-stackpoint", "system1fs").out == str(sp)
    assert (sp / "var/data").read_text() == "written on 1.0"

    # time to upgrade
    stacko("new-image", "apps-2.0", "foundation-libs0.1")
    d = Path(stacko("edit-image", "apps-2.0").out)
    (d / "bin").mkdir()
    (d / "bin/app").write_text("app 2.0")
    stacko("close-image", "apps-2.0")
    assert stacko("cutover-stackpoint", "system1fs", "apps-2.0").out == str(sp)
    assert (sp / "bin/app").read_text() == "app 2.0"
    assert not (sp / "var/data").exists()
    (sp / "new-on-2.0").write_text("2")

    # something is wrong: back to the previous instance, with its changes
    assert stacko("fallback-stackpoint", "system1fs").out == str(sp)
    assert (sp / "bin/app").read_text() == "app 1.0"
    assert (sp / "var/data").read_text() == "written on 1.0"
    assert not (sp / "new-on-2.0").exists()

    # and forward again, to the instance of apps-2.0 as it was left
    stacko("cutover-stackpoint", "system1fs", "apps-2.0")
    assert (sp / "new-on-2.0").read_text() == "2"
    assert stacko("list-images", "--tree").out.splitlines() == [
        "foundation-libs0.1", "├── apps-1.0", "└── apps-2.0"]
    stacko("umount-stackpoint", "system1fs")
