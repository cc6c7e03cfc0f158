"""stacko df: sizes of images and instances, what uses each image, what is
reclaimable, and the free space of the root's filesystem."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Runner, populate, snapshot
from stacko import df

def usage(stacko: Runner) -> dict:
    return json.loads(stacko("df", "--json").out)


def by_name(rows: list, key: str = "name") -> dict:
    return {r[key]: r for r in rows}


@pytest.mark.mounts
def test_df_of_an_empty_root(stacko: Runner, root: Path) -> None:
    data = usage(stacko)
    assert data["images"] == [] and data["instances"] == [] and data["reclaimable"] == 0
    st = os.statvfs(root.parent)
    assert abs(data["free"] - st.f_bavail * st.f_frsize) < 64 << 20


@pytest.mark.mounts
def test_df_sizes_users_and_reclaimable(stacko: Runner, root: Path) -> None:
    populate(stacko, "base", {"a": "x" * 10_000, "b": "y" * 5_000})
    populate(stacko, "app", {"c": "z" * 3_000}, parent="base")
    populate(stacko, "old", {"d": "w" * 7_000}, parent="base")      # no user at all
    populate(stacko, "mid", {"e": "v" * 2_000}, parent="base")      # used only by an unused child
    populate(stacko, "leaf", {"f": "u" * 1_000}, parent="mid")
    stacko("new-stackpoint", "p", "base")
    directory = Path(stacko("mount-stackpoint", "p").out)
    (directory / "written").write_text("q" * 4_000)
    stacko("cutover-stackpoint", "p", "app")
    (directory / "on-app").write_text("r" * 6_000)

    data = usage(stacko)
    images = by_name(data["images"])
    assert list(images) == sorted(images)
    assert images["base"]["size"] == 15_000 and images["app"]["size"] == 3_000
    assert images["base"]["used_by"] == [{"kind": "image", "name": "app"},
                                         {"kind": "image", "name": "mid"},
                                         {"kind": "image", "name": "old"},
                                         {"kind": "stackpoint", "name": "p"}]
    assert images["base"]["unused"] is False and images["app"]["unused"] is False
    assert images["old"]["unused"] is True and images["leaf"]["unused"] is True
    assert images["mid"]["unused"] is False      # leaf stacks on it
    instances = {(i["stackpoint"], i["image"]): i for i in data["instances"]}
    assert instances[("p", "base")] == {"stackpoint": "p", "image": "base", "size": 4_000,
                                        "current": False}
    assert instances[("p", "app")] == {"stackpoint": "p", "image": "app", "size": 6_000,
                                       "current": True}
    # old, mid and leaf are needed by no current instance; so is p's instance of base.
    assert data["reclaimable"] == 7_000 + 2_000 + 1_000 + 4_000
    assert data["free"] > 0

    plain = stacko("df").out.splitlines()
    assert plain[0].split() == ["IMAGE", "SIZE", "UNUSED", "USED", "BY"]
    assert any(line.split()[:3] == ["old", "6.8K", "yes"] for line in plain)
    assert any(line.split() == ["p", "app", "5.9K", "yes"] for line in plain)
    assert f"reclaimable  14K ({data['reclaimable']} bytes)" in plain


@pytest.mark.mounts
def test_hard_links_count_once(stacko: Runner, root: Path) -> None:
    stacko("new-image", "img")
    directory = Path(stacko("edit-image", "img").out)
    (directory / "one").write_text("h" * 8_192)
    os.link(directory / "one", directory / "two")
    os.mkdir(directory / "sub")
    os.link(directory / "one", directory / "sub" / "three")
    (directory / "link").symlink_to("one")
    stacko("close-image", "img")
    assert by_name(usage(stacko)["images"])["img"]["size"] == 8_192
    stacko("new-stackpoint", "p", "img")
    point = Path(stacko("mount-stackpoint", "p").out)
    (point / "mine").write_text("m" * 100)
    os.link(point / "mine", point / "also-mine")
    assert usage(stacko)["instances"][0]["size"] == 100


@pytest.mark.mounts
def test_an_image_open_for_editing_is_used_and_not_reclaimable(stacko: Runner,
                                                               root: Path) -> None:
    populate(stacko, "img", {"f": "x" * 1_000})
    stacko("edit-image", "img")
    data = usage(stacko)
    row = by_name(data["images"])["img"]
    assert row["unused"] is False and row["used_by"][0]["kind"] == "edit"
    assert data["reclaimable"] == 0


@pytest.mark.mounts
def test_df_changes_nothing(stacko: Runner, root: Path) -> None:
    populate(stacko, "img", {"f": "x"})
    stacko("new-stackpoint", "p", "img")
    before = snapshot(root)
    stacko("df")
    stacko("df", "--json")
    assert snapshot(root) == before


def test_tree_size_of_a_deep_layer(tmp_path: Path) -> None:
    path = tmp_path
    for _ in range(600):                 # deeper than Python's recursion would allow
        path = path / "d"
    path.mkdir(parents=True)
    (path / "f").write_bytes(b"x" * 123)
    assert df.tree_size(str(tmp_path)) == 123


@pytest.mark.parametrize("size,text", [(0, "0"), (1023, "1023"), (1024, "1.0K"),
                                       (15_000, "15K"), (5 << 20, "5.0M"), (None, "?")])
def test_human_sizes(size: int, text: str) -> None:
    assert df.human(size) == text


@pytest.mark.mounts
def test_image_sizes_come_from_the_record_and_old_records_are_measured(stacko: Runner,
                                                                       root: Path) -> None:
    populate(stacko, "sealed", {"f": "x" * 2_000})
    populate(stacko, "old", {"f": "x" * 3_000})
    data = json.loads((root / "images.json").read_text())
    assert data["images"]["sealed"]["size"] == 2_000      # recorded by close-image
    data["images"]["sealed"]["size"] = 123_456             # df reads it, never measures it
    del data["images"]["old"]["size"]                      # a record from before sizes
    (root / "images.json").write_text(json.dumps(data))
    images = by_name(usage(stacko)["images"])
    assert images["sealed"]["size"] == 123_456 and images["old"]["size"] == 3_000
