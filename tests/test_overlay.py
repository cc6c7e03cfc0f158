"""Unit tests of option building and mount table parsing (no root needed)."""
from __future__ import annotations

import pytest

from stacko import mounttable, overlay
from stacko.errors import StackoError

MOUNTINFO = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "66 22 0:39 / /tmp/my\\040root:x,y/stackpoints/sys rw,relatime shared:2 - overlay stacko "
    "rw,lowerdir=abcde:fghij,upperdir=klmno,workdir=../w/klmno\n"
    "67 22 0:40 / /tmp/back\\134slash\\011tab ro,relatime - overlay stacko "
    "ro,lowerdir=a\\134:b:c\\134\\054d,upperdir=/x\\040y\\054z\n"
    "garbage line\n"
)


def test_mountinfo_escapes_are_decoded() -> None:
    mounts = mounttable.parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/", "/tmp/my root:x,y/stackpoints/sys", "/tmp/back\\slash\ttab"]
    sys_mount = mounts[1]
    assert sys_mount.fstype == "overlay" and sys_mount.source == "stacko"
    assert sys_mount.option("upperdir") == "klmno"
    assert sys_mount.option("workdir") == "../w/klmno"
    assert not sys_mount.read_only and mounts[2].read_only


def test_escaped_option_values_round_trip() -> None:
    m = mounttable.parse_mountinfo(MOUNTINFO)[2]
    assert m.option("lowerdir") == "a:b:c,d"
    assert m.option("upperdir") == "/x y,z"


def test_find_mount_takes_the_top_of_stacked_mounts() -> None:
    table = mounttable.parse_mountinfo(MOUNTINFO + "70 66 0:41 / /tmp/my\\040root:x,y/stackpoints/sys "
                                       "rw - tmpfs tmpfs rw\n")
    assert mounttable.find_mount("/tmp/my root:x,y/stackpoints/sys", table).fstype == "tmpfs"
    assert mounttable.find_mount("/nowhere", table) is None
    assert len(mounttable.mounts_under("/tmp/my root:x,y", table)) == 2


def test_options_escape_colon_comma_and_backslash() -> None:
    opts = overlay.build_options(["a:b", "c,d"], upper="e\\f", work="../w/e")
    assert opts == "lowerdir=a\\:b:c\\,d,upperdir=e\\\\f,workdir=../w/e"


def test_options_order_is_top_first_and_extras_last() -> None:
    assert overlay.build_options(["top", "bottom"], extra=["index=off"]) == \
        "lowerdir=top:bottom,index=off"


def test_page_options_name_layers_absolutely_where_they_fit() -> None:
    """mount(2)'s options: absolute paths, unambiguous in mountinfo, unless the
    stack needs the six-byte relative names to fit in the page."""
    layers = "/var/lib/stacko/l"
    opts = overlay.page_options(layers, ["aaaaa", "../e"], "ccccc", "../w/ccccc")
    assert opts.startswith("lowerdir=/var/lib/stacko/l/aaaaa:/var/lib/stacko/e,"
                           "upperdir=/var/lib/stacko/l/ccccc,workdir=/var/lib/stacko/w/ccccc")
    deep = [f"{i:05d}" for i in range(500)]
    opts = overlay.page_options(layers, deep, "zzzzz", "../w/zzzzz")
    assert opts.startswith("lowerdir=00000:00001:") and "upperdir=zzzzz," in opts
    assert len(opts) < overlay.MAX_MOUNT_DATA
    with pytest.raises(StackoError, match="deeper than the kernel"):
        overlay.page_options(layers, deep + ["x"])


def test_500_short_layers_fit_in_one_page() -> None:
    lowers = [f"{i:05d}" for i in range(500)]
    opts = overlay.build_options(lowers, upper="zzzzz", work="../w/zzzzz",
                                 extra=["index=off", "metacopy=off", "redirect_dir=off"])
    assert len(opts) < overlay.MAX_MOUNT_DATA


def test_501_layers_are_refused() -> None:
    with pytest.raises(StackoError, match="limit of 500"):
        overlay.build_options([f"{i:05d}" for i in range(501)])


def test_options_over_a_page_are_refused_with_a_message() -> None:
    with pytest.raises(StackoError, match="one mount call"):
        overlay.build_options(["x" * 100] * 50)


def test_upper_without_work_is_a_bug() -> None:
    with pytest.raises(ValueError):
        overlay.build_options(["a"], upper="b")


def test_portable_defaults_only_name_features_the_kernel_knows(tmp_path, monkeypatch) -> None:
    (tmp_path / "index").write_text("N")
    (tmp_path / "metacopy").write_text("N")
    monkeypatch.setattr(overlay, "PARAMETERS", str(tmp_path))
    assert overlay.kernel_defaults_off() == ["index=off", "metacopy=off"]
