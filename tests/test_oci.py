"""import-image and export-image against the real umoci and skopeo.

The reference for what an image holds is always `umoci unpack`; stacko's view is
a mounted stackpoint of the imported image.  Hostile and corrupt archives must
be refused with the state left byte-identical.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Dict

import pytest

from conftest import Runner, run_stacko, snapshot
from ocigen import (d, describe, diff_trees, f, fifo, hard, layer_tar, opq, sh, sym, tar_dir,
                    umoci_image, umoci_rootfs, wh, write_layout)

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("umoci", "skopeo", "zstd")),
    reason="umoci, skopeo and zstd are needed (tests/install-deps.sh)")
pytestmark = needs_tools

# security.capability v2 granting cap_net_bind_service (bit 10), permitted+effective
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def view(stacko: Runner, image: str, point: str = "") -> Path:
    """Mount a fresh stackpoint of image; returns its directory."""
    point = point or f"sp-{image}"
    stacko("new-stackpoint", point, image)
    return Path(stacko("mount-stackpoint", point).out)


def assert_same(ours: Path, reference: Path, dir_mtimes: bool = True) -> None:
    a, b = describe(ours, dir_mtimes), describe(reference, dir_mtimes)
    assert a == b, "\n".join(diff_trees(a, b)[:40])


# --- images built by umoci ----------------------------------------------------------
def step_base(rootfs: Path) -> None:
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "hostname").write_text("stacko\n")
    (rootfs / "bin").mkdir()
    tool = rootfs / "bin" / "tool"
    tool.write_bytes(b"\x7fELF pretend" * 100)
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAPABILITY)
    os.setxattr(tool, "user.origin", b"umoci")
    os.link(tool, rootfs / "bin" / "tool-link")
    os.symlink("tool", rootfs / "bin" / "alias")
    os.symlink("/etc/hostname", rootfs / "etc" / "abs-link")
    (rootfs / "tmp").mkdir()
    os.chmod(rootfs / "tmp", 0o1777)
    (rootfs / "srv").mkdir()
    os.chown(rootfs / "srv", 1000, 1001)
    (rootfs / "srv" / "data").write_text("owned")
    os.chown(rootfs / "srv" / "data", 1000, 1001)
    os.chmod(rootfs / "srv" / "data", 0o2640)
    os.mkfifo(rootfs / "srv" / "pipe")
    os.mknod(rootfs / "srv" / "null", 0o20666, os.makedev(1, 3))
    (rootfs / "doomed").mkdir()
    (rootfs / "doomed" / "a").write_text("a")
    (rootfs / "replaced").mkdir()
    (rootfs / "replaced" / "old").write_text("old")
    os.utime(rootfs / "etc" / "hostname", ns=(1_500_000_000_123_456_789,) * 2)


def step_change(rootfs: Path) -> None:
    os.unlink(rootfs / "etc" / "abs-link")
    shutil.rmtree(rootfs / "doomed")
    shutil.rmtree(rootfs / "replaced")
    (rootfs / "replaced").mkdir()
    (rootfs / "replaced" / "new").write_text("new")
    (rootfs / "etc" / "hostname").write_text("changed\n")
    os.chmod(rootfs / "bin" / "tool", 0o755)


def step_more(rootfs: Path) -> None:
    (rootfs / "usr" / "share").mkdir(parents=True)
    (rootfs / "usr" / "share" / "doc").write_text("x" * 100_000)
    os.unlink(rootfs / "bin" / "alias")
    (rootfs / "bin" / "alias").mkdir()


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("umoci")
    layout = base / "layout"
    umoci_image(layout, "app", [step_base, step_change, step_more], base)
    reference = umoci_rootfs(layout, "app", base / "ref")
    archive = base / "app.tar"
    sh("skopeo", "copy", f"oci:{layout}:app", f"oci-archive:{archive}:app")
    docker = base / "app-docker.tar"
    sh("skopeo", "copy", f"oci:{layout}:app", f"docker-archive:{docker}:app:latest")
    return {"layout": layout, "reference": reference, "archive": archive, "docker": docker}


@pytest.mark.mounts
@pytest.mark.parametrize("kind", ["layout", "archive", "docker"])
def test_umoci_image_matches_umoci_unpack(stacko: Runner, umoci_layout: Dict[str, Path],
                                          kind: str) -> None:
    ref = ["--ref", "app"] if kind == "layout" else []
    stacko("import-image", "app", str(umoci_layout[kind]), *ref)
    names = stacko("list-images").out.splitlines()
    assert names == ["app", "app.layer-1", "app.layer-2"]
    # Directory mtimes: umoci keeps them only for directories its layers name.
    assert_same(view(stacko, "app"), umoci_layout["reference"], dir_mtimes=kind != "docker")


@pytest.mark.mounts
def test_round_trip(stacko: Runner, root: Path, workdir: Path,
                    umoci_layout: Dict[str, Path]) -> None:
    stacko("import-image", "app", str(umoci_layout["archive"]))
    ours = view(stacko, "app")
    out1, out2 = workdir / "out1.tar", workdir / "out2.tar"
    stacko("export-image", "app", str(out1))
    stacko("export-image", "app", str(out2))
    assert out1.read_bytes() == out2.read_bytes(), "export is not deterministic"
    inspect = json.loads(sh("skopeo", "inspect", f"oci-archive:{out1}").stdout)
    assert len(inspect["Layers"]) == 3
    layout = workdir / "exported"
    layout.mkdir()
    sh("tar", "-xf", out1, "-C", layout)
    assert_same(ours, umoci_rootfs(layout, "app", workdir / "bundle"))
    fresh = workdir / "fresh root"
    run_stacko(fresh, "import-image", "copy", str(out1))
    assert run_stacko(fresh, "list-images").out.splitlines() == \
        ["app.layer-1", "app.layer-2", "copy"], "lower names come back from the annotations"
    run_stacko(fresh, "new-stackpoint", "p", "copy")
    again = Path(run_stacko(fresh, "mount-stackpoint", "p").out)
    assert_same(again, ours)


@pytest.mark.mounts
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_export_compressions(stacko: Runner, workdir: Path, umoci_layout: Dict[str, Path],
                             compression: str) -> None:
    stacko("import-image", "app", str(umoci_layout["archive"]))
    out = workdir / "out.tar"
    stacko("export-image", "app", str(out), "--compression", compression)
    inspect = json.loads(sh("skopeo", "inspect", "--raw", f"oci-archive:{out}").stdout)
    media = {layer["mediaType"] for layer in inspect["layers"]}
    assert media == {"application/vnd.oci.image.layer.v1.tar" +
                     ("+zstd" if compression == "zstd" else "")}
    fresh = workdir / "fresh"
    run_stacko(fresh, "import-image", "copy", str(out))
    run_stacko(fresh, "new-stackpoint", "p", "copy")
    assert_same(Path(run_stacko(fresh, "mount-stackpoint", "p").out), umoci_layout["reference"])


@pytest.mark.mounts
def test_export_to_stdout(stacko: Runner, workdir: Path, umoci_layout: Dict[str, Path]) -> None:
    stacko("import-image", "app", str(umoci_layout["archive"]))
    out = workdir / "file.tar"
    stacko("export-image", "app", str(out))
    piped = subprocess.run(stacko("export-image", "app", "-", rc=None).argv,
                           capture_output=True, check=True).stdout
    assert piped == out.read_bytes()


# --- images from our own generator ------------------------------------------------------
GENERATED = [
    [d("etc", mtime=1_000), f("etc/a", b"a"), f("etc/b", b"b"), d("opt"), f("opt/keep", b"k"),
     d("var"), d("var/cache"), f("var/cache/1", b"1"), f("var/cache/2", b"2"),
     sym("etc/link", "a"), fifo("etc/fifo"), f("root-file", b"r", uid=5, gid=6),
     f("precise", b"p", mtime_text="1600000000.123456789")],
    [d("etc", mtime=2_000), wh("etc/b"), d("var"), d("var/cache", mode=0o700), opq("var/cache"),
     f("var/cache/3", b"3"), wh("root-file"),
     f("etc/new", b"n", mode=0o600, xattrs={"user.k": b"v\x00\xff"})],
    [d("opt"), wh("opt/keep"), f("opt/other", b"o"), hard("opt/other-link", "opt/other")],
]


@pytest.mark.mounts
def test_generated_whiteouts_opaque_zstd(stacko: Runner, workdir: Path) -> None:
    zstd_layout, gzip_layout = workdir / "zstd", workdir / "gzip"
    write_layout(zstd_layout, GENERATED, compression=["zstd", "none", "gzip"])
    write_layout(gzip_layout, GENERATED)                  # the same tars, for umoci 0.4
    reference = umoci_rootfs(gzip_layout, "latest", workdir / "ref")
    stacko("import-image", "gen", str(zstd_layout))
    ours = view(stacko, "gen")
    assert_same(ours, reference)
    assert sorted(os.listdir(ours / "var" / "cache")) == ["3"]
    assert not (ours / "etc" / "b").exists() and not (ours / "root-file").exists()
    assert os.lstat(ours / "precise").st_mtime_ns == 1_600_000_000_123_456_789
    # Overlay whiteouts and opaque directories go back out as OCI ones.
    out = workdir / "gen.tar"
    stacko("export-image", "gen", str(out), "--compression", "none")
    exported = workdir / "exported"
    exported.mkdir()
    sh("tar", "-xf", out, "-C", exported)
    assert_same(ours, umoci_rootfs(exported, "gen", workdir / "bundle"))
    fresh = workdir / "fresh"
    run_stacko(fresh, "import-image", "gen", str(out))
    run_stacko(fresh, "new-stackpoint", "p", "gen")
    assert_same(Path(run_stacko(fresh, "mount-stackpoint", "p").out), ours)


@pytest.mark.mounts
def test_500_layers(stacko: Runner, workdir: Path) -> None:
    layers = [[d("l"), f(f"l/{n:03d}", str(n).encode())] for n in range(500)]
    layout = workdir / "deep"
    write_layout(layout, layers, compression=["none"] * 500)
    archive = tar_dir(layout, workdir / "deep.tar")
    stacko("import-image", "deep", str(archive))
    ours = view(stacko, "deep")
    assert len(os.listdir(ours / "l")) == 500
    assert (ours / "l" / "499").read_text() == "499"
    assert len(stacko("list-images").out.splitlines()) == 500


@pytest.mark.mounts
def test_shared_base_is_stored_once(stacko: Runner, root: Path, workdir: Path) -> None:
    base = [d("usr"), f("usr/lib", b"lib" * 1000)]
    write_layout(workdir / "one", [base, [f("one", b"1")]])
    write_layout(workdir / "two", [base, [f("two", b"2")]])
    stacko("import-image", "one", str(workdir / "one"))
    layers = len(os.listdir(root / "l"))
    stacko("import-image", "two", str(workdir / "two"))
    assert len(os.listdir(root / "l")) == layers + 1
    tree = stacko("list-images", "--tree").out.splitlines()
    assert tree == ["one.layer-1", "├── one", "└── two"]
    assert (view(stacko, "two") / "usr" / "lib").read_bytes() == b"lib" * 1000


@pytest.mark.mounts
@pytest.mark.parametrize("how", ["none", "gzip", "zstd", "stdin"])
def test_rootfs_tarball_on_parent(stacko: Runner, root: Path, workdir: Path, how: str) -> None:
    from ocigen import compress
    data = layer_tar([d("app"), f("app/run", b"#!/bin/sh\n", mode=0o755), wh("etc/motd")])
    archive = workdir / "rootfs.bin"       # no telling suffix: the content decides
    archive.write_bytes(compress(data, "none" if how == "stdin" else how))
    write_layout(workdir / "base", [[d("etc"), f("etc/motd", b"hi"), f("etc/keep", b"k")]])
    stacko("import-image", "base", str(workdir / "base"))
    if how == "stdin":
        stacko("import-image", "app", "-", "base", input=archive.read_bytes())
    else:
        stacko("import-image", "app", str(archive), "base")
    ours = view(stacko, "app")
    assert (ours / "app" / "run").read_bytes() == b"#!/bin/sh\n"
    assert sorted(os.listdir(ours / "etc")) == ["keep"]
    record = json.loads((root / "images.json").read_text())["images"]["app"]
    assert record["parent"] == "base"
    assert record["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.mounts
def test_ref_choice(stacko: Runner, workdir: Path) -> None:
    layout = workdir / "multi"
    write_layout(layout, [[f("a", b"a")]], ref="first")
    write_layout(layout, [[f("b", b"b")]], ref="second", add=True)
    # which image to import is a question about the data (exit 1), not bad usage (2)
    r = stacko("import-image", "x", str(layout), rc=1)
    assert f"the layout directory {layout} holds 2 images: 'first' and 'second'" in r.stderr
    assert "choose one with --ref" in r.stderr and "archive" not in r.stderr
    r = stacko("import-image", "x", str(layout), "--ref", "third", rc=1)
    assert "has no image 'third'; it has 'first' and 'second'" in r.stderr
    stacko("import-image", "x", str(layout), "--ref", "second")
    assert (view(stacko, "x") / "b").exists()


# --- refusals -----------------------------------------------------------------------------
def hostile_layout(path: Path, members) -> Path:
    write_layout(path, [[f("ok", b"fine")], members])
    return path


HOSTILE = {
    "absolute": [f("/etc/evil", b"x")],
    "dotdot": [f("../../evil", b"x")],
    "dotdot-inside": [d("a"), f("a/../../evil", b"x")],
    "symlink-then-write": [sym("escape", "/tmp"), f("escape/evil", b"x")],
    "symlink-dir-then-write": [sym("escape", ".."), d("escape/sub")],
    "hardlink-outside": [hard("evil", "../../../etc/passwd")],
    "hardlink-absolute": [hard("evil", "/etc/passwd")],
    "hardlink-through-symlink": [sym("escape", "/etc"), hard("evil", "escape/passwd")],
}


@pytest.mark.mounts
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused(stacko: Runner, root: Path, workdir: Path, case: str) -> None:
    stacko("new-image", "existing")
    before = snapshot(root)
    layout = hostile_layout(workdir / case, HOSTILE[case])
    r = stacko("import-image", "evil", str(tar_dir(layout, workdir / "evil.tar")), rc=1)
    assert "refusing" in r.stderr, r.stderr
    assert snapshot(root) == before
    assert not Path("/tmp/evil").exists() and not (workdir / "evil").exists()
    assert os.listdir(root / "tmp") == []


def corrupt(layout: Path, how: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    if how == "blob":
        blob = layout / "blobs" / "sha256" / manifest["layers"][1]["digest"][7:]
        data = bytearray(blob.read_bytes())
        data[-10] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif how == "diff_id":        # a valid config that lies about the layer
        config_path = layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]
        config = json.loads(config_path.read_text())
        config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
        text = json.dumps(config).encode()
        digest = hashlib.sha256(text).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(text)
        manifest["config"].update(digest="sha256:" + digest, size=len(text))
        text = json.dumps(manifest).encode()
        digest = hashlib.sha256(text).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(text)
        index["manifests"][0].update(digest="sha256:" + digest, size=len(text))
        (layout / "index.json").write_text(json.dumps(index))
    elif how == "manifest":
        manifest_path.write_text(json.dumps({**manifest, "annotations": {"x": "y"}}))
    elif how == "truncated":
        blob = layout / "blobs" / "sha256" / manifest["layers"][1]["digest"][7:]
        blob.write_bytes(blob.read_bytes()[:40])


@pytest.mark.mounts
@pytest.mark.parametrize("how", ["blob", "diff_id", "manifest", "truncated"])
def test_corrupt_archive_refused(stacko: Runner, root: Path, workdir: Path, how: str) -> None:
    stacko("new-image", "existing")
    layout = workdir / "layout"
    write_layout(layout, [[f("a", b"a" * 5000)], [f("b", b"b" * 5000)]])
    corrupt(layout, how)
    before = snapshot(root)
    r = stacko("import-image", "bad", str(layout), rc=1)
    assert any(w in r.stderr for w in ("digest", "corrupt", "diff_id", "truncated")), r.stderr
    assert snapshot(root) == before


@pytest.mark.mounts
def test_refusals_change_nothing(stacko: Runner, root: Path, workdir: Path) -> None:
    write_layout(workdir / "l", [[f("a", b"a")]])
    stacko("import-image", "img", str(workdir / "l"))
    before = snapshot(root)
    stacko("import-image", "img", str(workdir / "l"), rc=1)           # exists
    stacko("import-image", "../x", str(workdir / "l"), rc=2)           # bad name
    stacko("import-image", "y", str(workdir / "l"), "missing", rc=1)   # no parent
    stacko("import-image", "y", str(workdir / "nothing"), rc=1)
    (workdir / "junk").write_bytes(b"not an archive at all")
    stacko("import-image", "y", str(workdir / "junk"), rc=1)
    stacko("export-image", "nope", str(workdir / "o.tar"), rc=1)
    assert snapshot(root) == before
    assert not (workdir / "o.tar").exists()


@pytest.mark.mounts
def test_killed_import_leftovers_are_cleaned(stacko: Runner, root: Path, workdir: Path) -> None:
    write_layout(workdir / "l", [[f("a", b"a")]])
    stacko("new-image", "first")
    leftover = root / "tmp" / "import-123-deadbeef" / "layer-0"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("half")
    stacko("import-image", "img", str(workdir / "l"))
    assert os.listdir(root / "tmp") == []


@pytest.mark.mounts
def test_deep_paths(stacko: Runner, workdir: Path) -> None:
    deep = "/".join(["d"] * 600)      # shutil.rmtree (pytest, stacko) recurses per level
    write_layout(workdir / "l", [[f(deep + "/file", b"deep")]])
    stacko("import-image", "deep", str(workdir / "l"))
    out = workdir / "out.tar"
    stacko("export-image", "deep", str(out))
    run_stacko(workdir / "fresh", "import-image", "deep", str(out))


def test_names_are_checked_before_reading(stacko: Runner, workdir: Path) -> None:
    stacko("import-image", "a/b", str(workdir), rc=2)


def test_layer_tar_names() -> None:
    from stacko.formats.layertar import HostileArchive, clean_name
    assert clean_name("./a//b/", "m") == "a/b"
    assert clean_name("./", "m") == ""
    for bad in ("/abs", "a/../../b", ".."):
        with pytest.raises(HostileArchive):
            clean_name(bad, "m")


def test_gzip_layer_of_export_has_no_time_or_name(tmp_path: Path) -> None:
    from stacko.formats.ociexport import write_layer
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "f").write_text("x")
    blob, diff_id = write_layer(str(tmp_path / "layer"), str(tmp_path / "blob"), "gzip")
    data = (tmp_path / "blob").read_bytes()
    assert data[4:8] == b"\0\0\0\0" and data[3] == 0        # no mtime, no FNAME
    plain = gzip.decompress(data)
    assert diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(plain))] == ["f"]
