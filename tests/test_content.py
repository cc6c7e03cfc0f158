"""Content manifests, verify-image and check --content."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Runner, du, populate, random_tar, snapshot
from ocigen import d, f, opq, sym, wh, write_layout

from stacko import content

mounts = pytest.mark.mounts


def layer_of(root: Path, image: str) -> Path:
    data = json.loads((root / "images.json").read_text())
    return root / "l" / data["images"][image]["layer"]


def record_of(root: Path, image: str) -> dict:
    return json.loads((root / "images.json").read_text())["images"][image]


# --- without root ---------------------------------------------------------------------
def test_compare_names_each_difference() -> None:
    a = {"/": {"type": "dir"}, "/x": {"type": "file", "sha256": "1"}, "/y": {"type": "fifo"}}
    b = {"/": {"type": "dir"}, "/x": {"type": "file", "sha256": "2"}, "/z": {"type": "fifo"}}
    assert content.compare(a, b) == [("M", "/x"), ("-", "/y"), ("+", "/z")]
    assert content.compare(a, dict(a)) == []


def test_manifest_digest_ignores_times_and_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "file").write_bytes(b"x" * 1000)
    os.link(tmp_path / "a" / "file", tmp_path / "a" / "link")
    os.symlink("file", tmp_path / "a" / "sym")
    first = content.build(str(tmp_path / "a"))
    assert first.size == du(tmp_path / "a") >= 1000      # allocated, the file once
    assert first.entries["/sym"] == {"type": "symlink", "uid": os.geteuid(),
                                     "gid": os.getegid(), "target": "file"}
    assert first.entries["/link"]["sha256"] == first.entries["/file"]["sha256"]
    os.utime(tmp_path / "a" / "file", (1, 1))
    assert content.build(str(tmp_path / "a")).digest == first.digest
    os.chmod(tmp_path / "a" / "file", 0o600)
    assert content.build(str(tmp_path / "a")).digest != first.digest


# --- verify-image ---------------------------------------------------------------------
@mounts
def test_verify_image_names_each_kind_of_damage(stacko: Runner, root: Path) -> None:
    populate(stacko, "img", {"etc/passwd": "root:x:0:0\n", "bin/tool": "#!/bin/sh\necho hi\n",
                             "data/blob": "0123456789" * 100, "lib/gone": "bye\n",
                             "etc/mode": "m\n"})
    assert stacko("verify-image", "img").out == ""
    layer = layer_of(root, "img")
    os.truncate(layer / "data" / "blob", 500)                # truncated
    raw = bytearray((layer / "bin" / "tool").read_bytes())   # one flipped byte
    raw[3] ^= 0x01
    (layer / "bin" / "tool").write_bytes(bytes(raw))
    (layer / "lib" / "gone").unlink()                        # removed
    (layer / "etc" / "planted").write_text("evil\n")         # planted
    os.chmod(layer / "etc" / "mode", 0o4755)                 # changed mode
    result = stacko("verify-image", "img", rc=1)
    assert result.out.split("\n") == ["M /bin/tool", "M /data/blob", "M /etc/mode",
                                      "+ /etc/planted", "- /lib/gone"]
    assert "5 differences" in result.stderr


@mounts
def test_verify_image_owner_xattrs_whiteouts_and_opaque(stacko: Runner, root: Path,
                                                        workdir: Path) -> None:
    layout = workdir / "layout"
    write_layout(layout, [[d("a"), f("a/x", b"1"), f("a/y", b"2"), d("o"), f("o/z", b"3")],
                          [wh("a/x"), opq("o"), f("o/new", b"4", uid=7, gid=8),
                           sym("s", "o/new")]])
    stacko("import-image", "img", str(layout))
    assert stacko("verify-image", "img", "img.layer-1").out == ""
    layer = layer_of(root, "img")
    os.chown(layer / "o" / "new", 9, 8)
    os.setxattr(layer / "o", "trusted.overlay.opaque", b"n")     # no longer opaque
    os.unlink(layer / "a" / "x")                                  # the whiteout
    os.setxattr(layer / "a", "user.note", b"x")                   # an xattr added
    out = stacko("verify-image", "img", rc=1).out.split("\n")
    assert out == ["M /a", "- /a/x", "M /o", "M /o/new"]


@mounts
def test_verify_several_images_names_each_line(stacko: Runner, root: Path) -> None:
    populate(stacko, "one", {"f": "1"})
    populate(stacko, "two", {"g": "2"}, parent="one")
    (layer_of(root, "two") / "g").write_text("22")
    result = stacko("verify-image", "one", "two", rc=1)
    assert result.out == "two: M /g"


@mounts
def test_verify_unknown_and_unsealed_images(stacko: Runner, root: Path) -> None:
    stacko("new-image", "empty")                 # sealed when made, empty
    assert stacko("verify-image", "empty").out == ""
    stacko("verify-image", "nosuch", rc=1)
    stacko("verify-image", "../x", rc=2)
    stacko("edit-image", "empty")
    result = stacko("verify-image", "empty", rc=1)
    assert "is open for editing" in result.stderr and "close-image empty" in result.stderr
    stacko("close-image", "empty")
    assert stacko("verify-image", "empty").out == ""


@mounts
def test_image_made_before_manifests(stacko: Runner, root: Path) -> None:
    """An image without a manifest says so plainly; close-image records one."""
    populate(stacko, "old", {"f": "data"})
    data = json.loads((root / "images.json").read_text())
    for key in ("manifest", "size"):
        del data["images"]["old"][key]
    (root / "images.json").write_text(json.dumps(data))
    before = snapshot(root)
    result = stacko("verify-image", "old", rc=1)
    assert "has no content manifest" in result.stderr
    assert "stacko close-image old" in result.stderr
    assert snapshot(root) == before
    assert "has no content manifest" in stacko("check", "--content", rc=1).out
    stacko("check")                                  # plain check does not read content
    stacko("close-image", "old")                     # not mounted: seals it
    assert record_of(root, "old")["size"] == du(layer_of(root, "old")) >= 4
    assert stacko("verify-image", "old").out == ""


@mounts
def test_damaged_manifest_is_not_taken_for_damaged_content(stacko: Runner, root: Path) -> None:
    populate(stacko, "img", {"f": "data"})
    manifest = root / "m" / f"{layer_of(root, 'img').name}.json"
    manifest.write_text(manifest.read_text().replace('"size":4', '"size":5'))
    result = stacko("verify-image", "img", rc=1)
    assert "the manifest is damaged" in result.stderr and result.out == ""


@mounts
def test_check_content_reports_every_image(stacko: Runner, root: Path) -> None:
    populate(stacko, "a", {"f": "1"})
    populate(stacko, "b", {"g": "2"})
    stacko("check", "--content")
    (layer_of(root, "b") / "g").write_text("3")
    assert stacko("check").out == ""                 # plain check: metadata and mounts only
    result = stacko("check", "--content", rc=1)
    assert result.out == "image 'b': M /g (changed since it was sealed)"
    # --repair cannot undo damaged content: the hint must not send the admin there.
    assert "--repair has no repair for these" in result.stderr
    assert "`stacko check --repair` fixes" not in result.stderr
    # ... but says what the admin can do instead
    assert "`stacko verify-image b` lists the differences; import or pull it again" \
        in result.stderr and "`stacko delete-image b`" in result.stderr
    (root / "l" / "zzzzz").mkdir()            # a leftover layer: that one --repair can fix
    result = stacko("check", "--content", rc=1)
    assert "`stacko check --repair` fixes what it can" in result.stderr


@mounts
def test_verify_needs_root(stacko: Runner, root: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    """trusted.* xattrs (opaque directories) are invisible to other users: no
    half-verified answer, a clear refusal."""
    from stacko import cli
    populate(stacko, "img", {"f": "1"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["--root", str(root), "verify-image", "img"]) == 1
    assert "verify-image needs root" in capsys.readouterr().err


# --- sealing and identity -------------------------------------------------------------
@mounts
def test_manifests_follow_the_image(stacko: Runner, root: Path) -> None:
    populate(stacko, "img", {"f": "1"})
    layer = layer_of(root, "img").name
    assert (root / "m" / f"{layer}.json").exists()
    stacko("delete-image", "img")
    assert not (root / "m" / f"{layer}.json").exists()


@mounts
def test_commit_seals_the_new_image(stacko: Runner, root: Path) -> None:
    populate(stacko, "base", {"f": "1"})
    stacko("new-stackpoint", "p", "base")
    mounted = Path(stacko("mount-stackpoint", "p").out)
    (mounted / "new").write_text("hello")
    (mounted / "f").unlink()
    stacko("commit-stackpoint", "p", "next")
    assert record_of(root, "next")["size"] == du(layer_of(root, "next")) >= 5
    assert stacko("verify-image", "next").out == ""
    entries = json.loads((root / "m" / f"{layer_of(root, 'next').name}.json").read_text())
    assert entries["entries"]["/f"] == {"type": "whiteout"}


@mounts
def test_content_identity_survives_export_and_import(stacko: Runner, root: Path,
                                                     workdir: Path) -> None:
    """The same files give the same manifest whatever tar carried them, and an
    image that comes back after an export is recognised and not stored twice."""
    populate(stacko, "base", {"etc/os-release": "ID=x\n", "bin/sh": "#!\n"})
    populate(stacko, "app", {"app/run": "go\n"}, parent="base")
    stacko("export-image", "app", str(workdir / "app.tar"))
    layers_before = sorted(os.listdir(root / "l"))
    stacko("import-image", "app2", str(workdir / "app.tar"))
    # base came back: reused, by its content (it has no diff_id: made by hand).
    assert record_of(root, "app2")["parent"] == "base"
    assert len(os.listdir(root / "l")) == len(layers_before) + 1
    assert record_of(root, "app2")["manifest"] == record_of(root, "app")["manifest"]
    assert stacko("verify-image", "app2").out == ""
    stacko("check")


@mounts
def test_import_records_size_and_manifest(stacko: Runner, root: Path, workdir: Path) -> None:
    archive = random_tar(workdir / "r.tar", files=10, size=1000)
    stacko("import-image", "r", str(archive))
    record = record_of(root, "r")
    assert record["size"] == du(layer_of(root, "r")) >= 10_000
    assert record["manifest"].startswith("sha256:")
    # The hashes computed while unpacking are those of the files on disk.
    assert content.build(str(layer_of(root, "r"))).digest == record["manifest"]


@mounts
def test_check_removes_manifests_no_image_has(stacko: Runner, root: Path) -> None:
    populate(stacko, "img", {"f": "1"})
    (root / "m" / "zzzzz.json").write_text("{}")
    (root / "m" / ".zzzzz.json.0123.tmp").write_text("")
    out = stacko("check", rc=1).out
    assert "no image has layer zzzzz" in out and "leftover temporary file" in out
    stacko("check", "--repair")
    assert sorted(os.listdir(root / "m")) == [f"{layer_of(root, 'img').name}.json"]
    stacko("check")


@mounts
def test_check_repairs_a_layer_and_its_manifest_together(stacko: Runner, root: Path) -> None:
    """new-image killed after making its layer and manifest, before recording."""
    stacko("new-image", "img")
    data = json.loads((root / "images.json").read_text())
    del data["images"]["img"]
    (root / "images.json").write_text(json.dumps(data))
    out = stacko("check", rc=1).out
    assert "no record names it" in out and "no image has layer" in out
    stacko("check", "--repair")
    stacko("check")
    assert os.listdir(root / "m") == []


# --- what the kernel honours (issue 18, item 12) --------------------------------------
HONOURED = [("d1", "trusted.overlay.redirect", b"/elsewhere"),
            ("f1", "trusted.overlay.metacopy", b""),
            ("d2", "trusted.overlay.opaque", b"x"),           # an xwhiteout directory …
            ("d2/gone", "trusted.overlay.whiteout", b""),     # … and its whiteout file
            ("f2", "trusted.overlay.overlay.opaque", b"y")]   # escaped, of a nested overlay


def sealed_with_twins(stacko: Runner) -> None:
    populate(stacko, "img", {"d1/conf": "good\n", "d2/gone": "", "f1": "1\n", "f2": "2\n",
                             "twin/a": "same\n", "twin/b": "same\n"})


@mounts
@pytest.mark.parametrize("path, name, value", HONOURED)
def test_verify_sees_every_overlay_xattr_the_kernel_honours(stacko: Runner, root: Path,
                                                           path: str, name: str,
                                                           value: bytes) -> None:
    sealed_with_twins(stacko)
    assert stacko("verify-image", "img").out == ""
    os.setxattr(layer_of(root, "img") / path, name, value, follow_symlinks=False)
    before = snapshot(root)
    result = stacko("verify-image", "img", rc=1)
    assert result.out == f"M /{path}"
    assert stacko("check", "--content", rc=1).out == \
        f"image 'img': M /{path} (changed since it was sealed)"
    assert snapshot(root) == before


@mounts
def test_verify_sees_a_file_replaced_by_a_hard_link(stacko: Runner, root: Path) -> None:
    """Same data, mode and owner: only the link count and identity changed."""
    sealed_with_twins(stacko)
    twin = layer_of(root, "img") / "twin"
    (twin / "b").unlink()
    os.link(twin / "a", twin / "b")
    assert stacko("verify-image", "img", rc=1).out.split("\n") == ["M /twin/a", "M /twin/b"]
    # and a link made from outside the layer (someone keeps a handle on its data)
    (twin / "b").unlink()
    (twin / "b").write_text("same\n")
    assert stacko("verify-image", "img").out == ""
    os.link(twin / "a", root / "outside")
    assert stacko("verify-image", "img", rc=1).out == "M /twin/a"


@mounts
def test_hard_links_and_layer_bookkeeping_verify_clean(stacko: Runner, root: Path) -> None:
    """Hard links sealed as such verify; the uuid and impure marks the kernel puts
    on an upper layer (edit-image, commit-stackpoint) are not content."""
    populate(stacko, "base", {"etc/a": "1\n"})
    stacko("new-image", "app", "base")
    mounted = Path(stacko("edit-image", "app").out)
    (mounted / "etc" / "a").write_text("2\n")             # a copy-up: origin, impure
    os.link(mounted / "etc" / "a", mounted / "etc" / "b")
    stacko("close-image", "app")
    assert stacko("verify-image", "base", "app").out == ""
    entries = json.loads((root / "m" / f"{layer_of(root, 'app').name}.json").read_text())
    assert entries["version"] == 2
    assert entries["entries"]["/etc/b"]["link"] == "/etc/a"
    assert entries["entries"]["/etc/a"]["links"] == 2


@mounts
def test_a_version_1_manifest_still_verifies(stacko: Runner, root: Path) -> None:
    """Images sealed before version 2 keep their manifests: compared as version
    1 recorded them, but an overlay xattr the kernel honours is still reported."""
    sealed_with_twins(stacko)
    manifest = root / "m" / f"{layer_of(root, 'img').name}.json"
    data = json.loads(manifest.read_text())
    data["version"] = 1          # no links nor overlay xattrs: the same entries and digest
    manifest.write_text(json.dumps(data))
    assert stacko("verify-image", "img").out == ""
    os.setxattr(layer_of(root, "img") / "d1", "trusted.overlay.redirect", b"/twin")
    assert stacko("verify-image", "img", rc=1).out == "M /d1"
    data["version"] = 3
    manifest.write_text(json.dumps(data))
    assert "newer than this stacko understands" in stacko("verify-image", "img", rc=1).stderr


def test_manifest_entries_without_links_or_overlay_xattrs_are_as_version_1(
        tmp_path: Path) -> None:
    """Plain content keeps its digest across the version bump (import-image
    still finds an image sealed by an earlier stacko by its content)."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    entries = content.build(str(tmp_path)).entries
    assert set(entries["/f"]) == {"type", "mode", "uid", "gid", "size", "sha256"}
    assert content.as_version_1(entries["/f"]) == entries["/f"]
