"""What an adversarial review broke (issue 9), one test (or a few) per defect:
each failed before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Runner, populate, snapshot


def mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split(" ")[4].replace("\\040", " ") == str(path))


# --- 1: a symlink in a stackpoint's path ---------------------------------------------
@pytest.mark.mounts
def test_a_symlink_in_the_path_never_loses_the_mount(stacko: Runner, root: Path,
                                                     workdir: Path) -> None:
    populate(stacko, "base", {"f": "base\n"})
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    d = Path(stacko("mount-stackpoint", "sp").out)
    (d / "mine").write_text("precious\n")
    os.rename(workdir / "p", workdir / "moved")            # mv p moved; ln -s moved p
    (workdir / "p").symlink_to("moved")
    real = workdir / "moved" / "data"
    # The kernel reports the mount at the resolved path: it is mounted.
    stacko("is-stackpoint-mounted", "sp", rc=0)
    before = snapshot(root)
    for argv in (("mount-stackpoint", "sp"), ("umount-stackpoint", "sp")):
        r = stacko(*argv, rc=1)
        assert str(d) in r.stderr and str(real) in r.stderr, r.stderr
    r = stacko("delete-stackpoint", "sp", rc=1)
    assert snapshot(root) == before
    assert mounts_at(real) == 1
    assert (real / "mine").read_text() == "precious\n"


@pytest.mark.mounts
def test_an_instance_mounted_elsewhere_is_never_mounted_again_nor_deleted(
        stacko: Runner, root: Path, workdir: Path) -> None:
    populate(stacko, "base", {"f": "base\n"})
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    stacko("mount-stackpoint", "sp")
    os.rename(workdir / "p", workdir / "moved")             # no symlink left behind
    real = workdir / "moved" / "data"
    (real / "mine").write_text("precious\n")
    before = snapshot(root)
    r = stacko("mount-stackpoint", "sp", rc=1)
    assert str(real) in r.stderr, r.stderr
    r = stacko("delete-stackpoint", "sp", rc=1)
    assert str(real) in r.stderr, r.stderr
    assert snapshot(root) == before
    assert mounts_at(real) == 1 and (real / "mine").read_text() == "precious\n"


@pytest.mark.mounts
def test_check_reports_a_stackpoint_whose_directory_moved(stacko: Runner, workdir: Path) -> None:
    stacko("new-image", "base")
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    os.rename(workdir / "p", workdir / "moved")
    (workdir / "p").symlink_to("moved")
    r = stacko("check", rc=1)
    assert "now resolves to" in r.stdout and str(workdir / "moved" / "data") in r.stdout


# --- 3: records are validated when they are read -------------------------------------
def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("layer", ["../../victim", "/VICTIM", "l/../..", "ABCDE", ""])
def test_a_layer_id_that_stacko_never_makes_is_refused(stacko: Runner, root: Path,
                                                      workdir: Path, layer: str) -> None:
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep\n")
    stacko("new-image", "base")
    stacko("new-image", "other")
    layer = layer.replace("VICTIM", str(victim).lstrip("/"))
    edit_json(root / "images.json", lambda d: d["images"]["base"].update(layer=layer))
    before = snapshot(root)
    for argv in (("delete-image", "base"), ("delete-image", "other"), ("new-image", "x")):
        r = stacko(*argv, rc=1)
        assert "images.json" in r.stderr and "'base'" in r.stderr and "'layer'" in r.stderr, \
            r.stderr
    assert (victim / "keep").read_text() == "keep\n"
    assert snapshot(root) == before
    assert stacko("list-images").out.split() == ["base", "other"]     # listings still work
    r = stacko("check", rc=1)
    assert "'base'" in r.stdout and "'layer'" in r.stdout
    stacko("check", "--repair", rc=1)
    assert snapshot(root) == before and (victim / "keep").exists()


@pytest.mark.mounts
def test_a_stackpoint_path_inside_the_root_is_never_mounted(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    stacko("new-stackpoint", "sp", "base")
    edit_json(root / "stackpoints.json",
              lambda d: d["stackpoints"]["sp"].update(path=str(root / "l")))
    before = snapshot(root)
    r = stacko("mount-stackpoint", "sp", rc=1)
    assert "stackpoints.json" in r.stderr and "'path'" in r.stderr, r.stderr
    assert snapshot(root) == before
    assert "'path'" in stacko("check", rc=1).stdout


def test_check_reports_every_violation(stacko: Runner, root: Path) -> None:
    stacko("new-image", "a")
    stacko("new-image", "b", "a")
    stacko("new-image", "c")
    stacko("new-stackpoint", "sp", "c")
    stacko("new-stackpoint", "sq", "c")

    def images(d: dict) -> None:
        d["images"]["a"]["parent"] = "b"                               # a loop
        d["images"]["c"]["layer"] = d["images"]["b"]["layer"]          # a shared layer

    def points(d: dict) -> None:
        d["stackpoints"]["sp"]["history"] = ["nothing"]
        d["stackpoints"]["sq"]["instances"][0]["layer"] = \
            d["stackpoints"]["sp"]["instances"][0]["layer"]
    edit_json(root / "images.json", images)
    edit_json(root / "stackpoints.json", points)
    before = snapshot(root)
    r = stacko("check", rc=1)
    report = r.stdout
    assert "by hand" in r.stderr and "--repair" not in r.stderr, r.stderr
    assert "loop" in report and "'history'" in report and report.count("too") >= 2, report
    stacko("delete-stackpoint", "sq", rc=1)
    stacko("delete-image", "c", rc=1)
    assert snapshot(root) == before


def test_a_layer_another_record_names_is_never_removed(stacko: Runner, root: Path) -> None:
    """An image given the layer of a stackpoint's instance: deleting the image
    must not remove the instance's data."""
    stacko("new-image", "base")
    stacko("new-image", "decoy")
    stacko("new-stackpoint", "sp", "base")
    layer = json.loads((root / "stackpoints.json").read_text())["stackpoints"]["sp"][
        "instances"][0]["layer"]
    (root / "l" / layer / "mine").write_text("precious\n")
    edit_json(root / "images.json", lambda d: d["images"]["decoy"].update(layer=layer))
    r = stacko("delete-image", "decoy", rc=1)
    assert layer in r.stderr, r.stderr
    assert (root / "l" / layer / "mine").read_text() == "precious\n"


# --- 2: only stacko's own staging, only in a stacko root -----------------------------
def tiny_tar(path: Path) -> Path:
    import io
    import tarfile
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return path


def test_a_directory_that_is_no_stacko_root_is_never_cleaned(workdir: Path) -> None:
    from conftest import run_stacko
    var = workdir / "var"
    (var / "tmp" / "import-1-ab").mkdir(parents=True)
    (var / "tmp" / "user-file").write_text("mine\n")
    (var / "cache").mkdir()
    archive = tiny_tar(workdir / "a.tar")
    for argv in (("check", "--repair"), ("import-image", "x", str(archive)), ("new-image", "x")):
        r = run_stacko(var, *argv, rc=1)
        assert "not a stacko root" in r.stderr, r.stderr
    assert sorted(os.listdir(var)) == ["cache", "tmp"]
    assert sorted(os.listdir(var / "tmp")) == ["import-1-ab", "user-file"]
    r = run_stacko(var, "check", rc=None)
    assert "user-file" not in r.stdout and "import-1-ab" not in r.stdout


def test_only_stacko_staging_names_are_removed(stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    assert (root / ".stacko-root").is_file()
    tmp = root / "tmp"
    (tmp / "import-999991-0a1b2c3d").mkdir(parents=True)
    (tmp / "export-999992-0a1b2c3d").mkdir()
    (tmp / "notes").write_text("an admin's\n")
    (tmp / "import-me").mkdir()
    report = stacko("check", rc=1).stdout
    assert "import-999991-" in report and "export-999992-" in report
    assert "notes" not in report and "import-me" not in report
    stacko("check", "--repair")
    assert sorted(os.listdir(tmp)) == ["import-me", "notes"]
    (tmp / "import-999993-0a1b2c3d").mkdir()
    stacko("import-image", "x", str(tiny_tar(workdir / "a.tar")))
    assert sorted(os.listdir(tmp)) == ["import-me", "notes"]


def test_a_root_made_by_an_earlier_stacko_gets_its_marker(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    (root / ".stacko-root").unlink()
    assert stacko("list-images").out == "base"
    stacko("new-image", "other")
    assert (root / ".stacko-root").is_file()


def test_an_empty_directory_becomes_a_root(stacko: Runner, root: Path) -> None:
    root.mkdir()
    stacko("new-image", "base")
    assert (root / ".stacko-root").is_file()


def test_a_parent_writable_by_others_is_refused(workdir: Path) -> None:
    from conftest import run_stacko
    shared = workdir / "shared"
    shared.mkdir()
    run_stacko(shared / "root", "new-image", "base")
    os.chmod(shared, 0o777)
    for argv in (("new-image", "x"), ("list-images",)):
        r = run_stacko(shared / "root", *argv, rc=1)
        assert str(shared) in r.stderr and "writable by other users" in r.stderr, r.stderr
    os.chmod(shared, 0o1777)       # sticky, like /tmp: others cannot swap the root
    run_stacko(shared / "root", "new-image", "x")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_parent_owned_by_another_user_is_refused(workdir: Path) -> None:
    from conftest import run_stacko
    home = workdir / "home"
    home.mkdir()
    run_stacko(home / "root", "new-image", "base")
    os.chown(home, 65534, 65534)
    r = run_stacko(home / "root", "list-images", rc=1)
    assert "belongs to user 65534" in r.stderr and str(home) in r.stderr, r.stderr


# --- 5: temporary files never follow a planted symlink -------------------------------
def test_export_never_writes_through_a_planted_temp_name(tmp_path: Path) -> None:
    from stacko.formats import ociexport
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "out.tar"
    for name in (f".out.tar.stacko-{os.getpid()}.tmp", f".out.tar.{os.getpid()}.tmp"):
        (tmp_path / name).symlink_to(victim)
    ociexport.write_file(str(out), lambda f: f.write(b"archive"))
    assert victim.read_text() == "precious\n"
    assert out.read_bytes() == b"archive" and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["out.tar", "victim"]


def test_metadata_writes_never_follow_a_planted_temp_name(tmp_path: Path) -> None:
    from stacko import state
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "images.json"
    (tmp_path / f".images.json.{os.getpid()}.tmp").symlink_to(victim)
    state.atomic_write(str(target), b"{}\n")
    assert victim.read_text() == "precious\n" and target.read_bytes() == b"{}\n"


# --- 4: delete-stackpoint and a lazily detached mount still held ----------------------
@pytest.mark.mounts
def test_delete_stackpoint_refuses_while_a_detached_mount_is_held(stacko: Runner,
                                                                root: Path) -> None:
    populate(stacko, "base", {"f": "base\n"})
    stacko("new-stackpoint", "sp", "base")
    d = stacko("mount-stackpoint", "sp").out
    holder = subprocess.Popen(["sleep", "60"], cwd=d)
    try:
        time.sleep(0.2)
        stacko("umount-stackpoint", "sp", "--lazy")
        before = snapshot(root)
        r = stacko("delete-stackpoint", "sp", rc=1)
        assert f"{holder.pid} (sleep)" in r.stderr, r.stderr
        assert snapshot(root) == before
        stacko("delete-image", "base", rc=1)
    finally:
        holder.kill()
        holder.wait()
    stacko("delete-stackpoint", "sp")
    stacko("delete-image", "base")


# --- 6: --path above the root, a file, a mount point ---------------------------------
@pytest.mark.mounts
def test_path_above_the_root_a_file_or_a_mount_point_is_refused(stacko: Runner, root: Path,
                                                                workdir: Path) -> None:
    stacko("new-image", "base")
    afile = workdir / "afile"
    afile.write_text("x")
    before = snapshot(root)
    for path, why in ((workdir, "state root"), (afile, "not a directory"),
                      (Path("/proc"), "mount point"), (Path("/dev"), "mount point")):
        r = stacko("new-stackpoint", "sp", "base", "--path", str(path), rc=2)
        assert why in r.stderr, r.stderr
    assert snapshot(root) == before
    assert afile.read_text() == "x"


@pytest.mark.mounts
def test_a_directory_that_became_a_file_is_an_error(stacko: Runner, root: Path,
                                                    workdir: Path) -> None:
    stacko("new-image", "base")
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "d"))
    (workdir / "d").rmdir()
    (workdir / "d").write_text("x")
    r = stacko("mount-stackpoint", "sp", rc=1)
    assert "not a directory" in r.stderr, r.stderr


# --- 10: the lock --------------------------------------------------------------------
def run_with_timeout(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    import sys
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-m", "stacko", "--root", str(root), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_a_fifo_lock_is_refused_not_waited_on(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    (root / "lock").unlink()
    os.mkfifo(root / "lock", 0o600)
    for argv in (("list-images",), ("new-image", "x"), ("check",)):
        r = run_with_timeout(root, *argv)          # hung forever before
        assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_a_symlinked_lock_is_never_followed(stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    (root / "lock").unlink()
    target = workdir / "elsewhere"
    (root / "lock").symlink_to(target)
    for argv in (("new-image", "x"), ("list-images",)):
        r = stacko(*argv, rc=1)
        assert "symlink" in r.stderr, r.stderr
    assert not target.exists()
    assert json.loads((root / "images.json").read_text())["images"].keys() == {"base"}


READER = """
import os, sys, time
from stacko.state import Store
store, stop = Store(sys.argv[1]), sys.argv[2]
while not os.path.exists(stop):
    with store.locked(exclusive=False):
        time.sleep(0.25)
"""


def test_readers_never_starve_a_writer(stacko: Runner, root: Path, workdir: Path) -> None:
    """Eight readers that always overlap (the shared lock is never free) and a
    writer with a short timeout: before, it gave up; now it gets in."""
    import sys
    stacko("new-image", "base")
    stop = workdir / "stop"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    readers = []
    try:
        for _ in range(8):
            readers.append(subprocess.Popen([sys.executable, "-c", READER, str(root), str(stop)],
                                            env=env))
            time.sleep(0.04)
        time.sleep(1.0)
        for n in range(3):
            stacko("new-image", f"w{n}", env={"STACKO_LOCK_TIMEOUT": "8"})
        assert all(p.poll() is None for p in readers)      # they were looping all along
    finally:
        stop.touch()
        for p in readers:
            p.wait(timeout=30)
    assert all(p.returncode == 0 for p in readers)


# --- 9: --nodev / --nosuid -----------------------------------------------------------
def mount_options(path: str) -> list:
    with open("/proc/self/mountinfo") as f:
        found = [line.split(" ")[5] for line in f
                 if line.split(" ")[4].replace("\\040", " ") == path]
    return found[-1].split(",") if found else []


def device_tar(path: Path) -> Path:
    import io
    import tarfile
    with tarfile.open(path, "w") as tar:
        null = tarfile.TarInfo("null")
        null.type, null.mode, null.devmajor, null.devminor = tarfile.CHRTYPE, 0o666, 1, 3
        tar.addfile(null)
        tool = tarfile.TarInfo("tool")
        tool.mode, tool.size = 0o4755, 2
        tar.addfile(tool, io.BytesIO(b"#!"))
    return path


@pytest.mark.mounts
@pytest.mark.parametrize("api", ["legacy", "auto"])
def test_nodev_nosuid_are_remembered_per_stackpoint(stacko: Runner, workdir: Path,
                                                    api: str) -> None:
    env = {"STACKO_MOUNT_API": api}
    stacko("import-image", "os", str(device_tar(workdir / "os.tar")))
    stacko("new-image", "os2", "os")
    stacko("new-stackpoint", "safe", "os", "--nodev", "--nosuid", env=env)
    stacko("new-stackpoint", "full", "os", env=env)
    safe = stacko("mount-stackpoint", "safe", env=env).out
    full = stacko("mount-stackpoint", "full", env=env).out
    assert {"nodev", "nosuid"} <= set(mount_options(safe))
    assert not {"nodev", "nosuid"} & set(mount_options(full))
    with pytest.raises(PermissionError):          # the device node is dead here
        open(os.path.join(safe, "null"), "rb").close()
    open(os.path.join(full, "null"), "rb").close()   # and live in a full OS stackpoint
    for step in (("cutover-stackpoint", "safe", "os2"), ("fallback-stackpoint", "safe")):
        stacko(*step, env=env)
        assert {"nodev", "nosuid"} <= set(mount_options(safe)), step
    stacko("umount-stackpoint", "safe", env=env)
    stacko("mount-stackpoint", "safe", env=env)
    assert {"nodev", "nosuid"} <= set(mount_options(safe))
    listing = {p["name"]: p for p in json.loads(stacko("list-stackpoints", "--json").out)}
    assert listing["safe"]["nodev"] is True and listing["safe"]["nosuid"] is True
    assert listing["full"]["nodev"] is False and listing["full"]["nosuid"] is False


# --- 7: hostile JSON -----------------------------------------------------------------
DEEP = ("[" * 100_000 + "]" * 100_000).encode()


def put_blob(layout: Path, data: bytes) -> dict:
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def hostile_layout(layout: Path, case: str) -> str:
    """A valid two-layer layout, then one document made hostile; returns the
    name of the file (or field) the error must name."""
    from ocigen import f, write_layout
    made = write_layout(layout, [[f("a", b"a")], [f("b", b"b")]])
    manifest, config = made["manifest"], made["config"]
    index = json.loads((layout / "index.json").read_text())

    def set_manifest(data: bytes) -> None:
        index["manifests"][0].update(put_blob(layout, data))
        (layout / "index.json").write_text(json.dumps(index))

    def set_config(data: bytes) -> None:
        manifest["config"].update(put_blob(layout, data))
        set_manifest(json.dumps(manifest).encode())
    if case == "deep index":
        (layout / "index.json").write_bytes(b'{"manifests": ' + DEEP + b"}")
        return "index.json"
    if case == "deep manifest":
        set_manifest(DEEP)
        return "blobs/sha256/"
    if case == "deep config":
        set_config(b'{"rootfs": ' + DEEP + b"}")
        return "blobs/sha256/"
    if case == "index annotations a list":
        index["manifests"][0]["annotations"] = ["x"]
        (layout / "index.json").write_text(json.dumps(index))
        return "annotations"
    if case == "layer annotations a list":
        manifest["layers"][0]["annotations"] = ["x"]
        set_manifest(json.dumps(manifest).encode())
        return "annotations"
    if case == "manifest a list":
        set_manifest(json.dumps([manifest]).encode())
        return "manifest"
    if case == "name a number":
        manifest["layers"][0]["annotations"] = {"io.stacko.image.name": 5}
        set_manifest(json.dumps(manifest).encode())
        return "io.stacko.image.name"
    if case == "platform a list":
        nested = {"schemaVersion": 2, "manifests": [dict(index["manifests"][0], platform=[1]),
                                                    dict(index["manifests"][0], platform=[2])]}
        index["manifests"][0] = {"mediaType": "application/vnd.oci.image.index.v1+json",
                                 **put_blob(layout, json.dumps(nested).encode()),
                                 "annotations": {"org.opencontainers.image.ref.name": "latest"}}
        (layout / "index.json").write_text(json.dumps(index))
        return "platform"
    if case == "history a dict of lists":
        config["history"] = [{"created": ["x"]}, {"created": 5}]
        set_config(json.dumps(config).encode())
        return ""         # ignored, as a missing history is: it only dates the layers
    raise AssertionError(case)


HOSTILE = ["deep index", "deep manifest", "deep config", "index annotations a list",
           "layer annotations a list", "manifest a list", "name a number", "platform a list",
           "history a dict of lists"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_oci_json_is_an_error_naming_the_file(stacko: Runner, root: Path,
                                                      workdir: Path, case: str) -> None:
    stacko("new-image", "keep")
    layout = workdir / "layout"
    named = hostile_layout(layout, case)
    before = snapshot(root)
    r = stacko("import-image", "x", str(layout), rc=None)      # no traceback, whatever else
    if named:
        assert r.returncode == 1 and named in r.stderr, r.stderr
        assert snapshot(root) == before
    else:
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["deep", "repotags a number", "config a dict"])
def test_hostile_docker_manifest_is_an_error(stacko: Runner, root: Path, workdir: Path,
                                             case: str) -> None:
    import io
    import tarfile
    manifest = [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}]
    if case == "deep":
        data = DEEP
    elif case == "repotags a number":
        manifest[0]["RepoTags"] = 5
        data = json.dumps(manifest).encode()
    elif case == "entry a list":
        data = json.dumps([manifest[0], ["Layers"]]).encode()
    else:
        manifest[0]["Config"] = {"a": 1}
        data = json.dumps(manifest).encode()
    archive = workdir / "docker.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    before = snapshot(root)
    if case == "deep":      # no docker manifest: a plain rootfs tarball holding a file
        stacko("import-image", "x", str(archive))
        return
    r = stacko("import-image", "x", str(archive), rc=1)
    assert "manifest.json" in r.stderr, r.stderr
    assert snapshot(root) == before


def test_deeply_nested_metadata_is_corrupt_state(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    (root / "images.json").write_bytes(b'{"version": 1, "images": ' + DEEP + b"}")
    for argv in (("list-images",), ("new-image", "x"), ("check",)):
        r = stacko(*argv, rc=1)
        assert "images.json" in r.stderr, r.stderr


# --- 8: sparse members stay sparse; an archive larger than the free space is refused --
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_members_keep_their_holes(stacko: Runner, root: Path, workdir: Path,
                                         fmt: str) -> None:
    src = workdir / "src"
    src.mkdir()
    big = src / "big"
    with open(big, "wb") as f:          # 1 GiB apparent: 4 KiB of data at 3 places
        for offset in (0, 512 << 20, (1 << 30) - 4096):
            f.seek(offset)
            f.write(b"x" * 4096)
    archive = workdir / "sparse.tar"
    subprocess.run(["tar", f"--format={fmt}", "--sparse", "-cf", str(archive), "-C", str(src),
                    "big"], check=True)
    assert archive.stat().st_size < 1 << 20
    stacko("import-image", "s", str(archive))
    layer = json.loads((root / "images.json").read_text())["images"]["s"]["layer"]
    out = root / "l" / layer / "big"
    st = out.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 4 << 20, st.st_blocks       # holes, not a GiB of zeros
    with open(out, "rb") as f:
        for offset in (0, 512 << 20, (1 << 30) - 4096):
            f.seek(offset)
            assert f.read(4096) == b"x" * 4096
        f.seek(4096)
        assert f.read(4096) == bytes(4096)


@pytest.mark.mounts
def test_an_archive_larger_than_the_free_space_is_refused(workdir: Path) -> None:
    import gzip
    import io
    import tarfile
    from conftest import run_stacko
    small = workdir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    root = small / "root"
    run_stacko(root, "new-image", "keep")
    archive = workdir / "bomb.tar.gz"
    with gzip.open(archive, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for n in range(3):                  # 3 x 8 MiB of zeros: a few KiB compressed
            info = tarfile.TarInfo(f"zeros{n}")
            info.size = 8 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    before = snapshot(root)
    r = run_stacko(root, "import-image", "bomb", str(archive), rc=1)
    assert "free space" in r.stderr, r.stderr
    assert snapshot(root) == before
    assert run_stacko(root, "list-images").out == "keep"


class FakeRegistry:
    """A registry on 127.0.0.1 that serves one hostile document per path."""

    def __init__(self, answers: dict) -> None:
        import http.server
        import threading
        answers = dict(answers)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.get(self.path.split("?")[0], (404, b'{"errors": []}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hostile_registry_answers(case: str) -> tuple:
    import hashlib
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    cdigest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": "sha256:" + "1" * 64, "size": 5}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": len(config)}, "layers": [layer]}
    answers = {"/v2/": (200, b"{}"), f"/v2/x/blobs/{cdigest}": (200, config.encode())}
    if case == "deep manifest":
        answers["/v2/x/manifests/t"] = (200, DEEP)
        return answers, "manifest"
    if case == "layer annotations a list":
        layer["annotations"] = ["x"]
    elif case == "name a number":
        layer["annotations"] = {"io.stacko.image.name": 5}
    elif case == "platform a list":
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"digest": "sha256:" + "2" * 64, "platform": [1]}]}
        answers["/v2/x/manifests/t"] = (200, json.dumps(index).encode())
        return answers, "platform"
    elif case == "errors a number":
        answers["/v2/x/manifests/t"] = (404, b'{"errors": 5}')
        return answers, "has no 't'"
    elif case == "deep errors":
        answers["/v2/x/manifests/t"] = (404, b'{"errors": ' + DEEP + b"}")
        return answers, "has no 't'"
    answers["/v2/x/manifests/t"] = (200, json.dumps(manifest).encode())
    return answers, "annotations"


@pytest.mark.parametrize("case", ["deep manifest", "layer annotations a list", "name a number",
                                  "platform a list", "errors a number", "deep errors"])
def test_hostile_registry_documents_are_errors(stacko: Runner, root: Path, case: str) -> None:
    answers, named = hostile_registry_answers(case)
    fake = FakeRegistry(answers)
    try:
        r = stacko("pull-image", "x", f"{fake.host}/x:t", "--tls-verify=false", rc=1)
        assert named in r.stderr, r.stderr
    finally:
        fake.close()


@pytest.mark.mounts
def test_a_compressed_archive_larger_than_the_free_space_is_not_spooled(workdir: Path) -> None:
    """An OCI archive is read in any order, so a compressed one is decompressed
    into staging first: a gzip bomb there must not fill the disk either."""
    import gzip
    import io
    import tarfile
    from conftest import run_stacko
    small = workdir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    root = small / "root"
    run_stacko(root, "new-image", "keep")
    archive = workdir / "bomb.oci.tar.gz"
    with gzip.open(archive, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", b'{"manifests": []}'),
                           ("blobs/sha256/" + "0" * 64, bytes(24 << 20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    before = snapshot(root)
    r = run_stacko(root, "import-image", "bomb", str(archive), rc=1)
    assert "free space" in r.stderr, r.stderr
    assert snapshot(root) == before
