"""import-image NAME DIR: a plain directory tree imports as one layer, keeping
what a tar of it would (owners, modes, times, xattrs, hard links, devices),
with file data cloned where the filesystem can; and a rootfs tarball on stdin
is unpacked as it streams by."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import Runner, snapshot
from ocigen import describe, diff_trees

pytestmark = pytest.mark.mounts

# security.capability as setcap cap_net_raw+ep writes it (VFS_CAP_REVISION_2).
CAP_NET_RAW = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


def chroot_like(src: Path) -> Path:
    """A tree with every kind of entry and attribute a system image has."""
    (src / "etc" / "ssl").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("deb12\n")
    (src / "etc" / "ssl" / "key").write_bytes(os.urandom(3000))
    os.chmod(src / "etc" / "ssl", 0o710)
    os.chown(src / "etc" / "ssl", 0, 101)
    os.chmod(src / "etc" / "ssl" / "key", 0o640)
    (src / "usr" / "bin").mkdir(parents=True)
    big = src / "usr" / "bin" / "big"
    big.write_bytes(os.urandom(5 << 20))
    ping = src / "usr" / "bin" / "ping"
    ping.write_bytes(b"\x7fELF ping")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    su = src / "usr" / "bin" / "su"
    su.write_bytes(b"\x7fELF su")
    os.chmod(su, 0o4755)
    os.link(su, src / "usr" / "bin" / "su-again")          # a hard link
    (src / "usr" / "bin" / "sh").symlink_to("dash")        # relative symlink
    (src / "usr" / "bin" / "passwd-link").symlink_to("/etc/passwd")   # never followed
    (src / "home" / "u").mkdir(parents=True)
    os.chown(src / "home" / "u", 1000, 1000)
    (src / "home" / "u" / "notes").write_text("mine")
    os.chown(src / "home" / "u" / "notes", 1000, 1000)
    os.setxattr(src / "home" / "u" / "notes", "user.origin", b"deb12")
    os.setxattr(src / "home" / "u" / "notes", "trusted.md5", b"\x00\x01binary")
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "dev").mkdir()
    os.mknod(src / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "dev" / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(src / "dev" / "loop9", 0, 6)
    os.mkfifo(src / "dev" / "initctl", 0o600)
    (src / "empty").write_bytes(b"")
    # times with nanoseconds, directories last (their entries change them)
    for n, path in enumerate(sorted(src.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, ns=(1_600_000_000_123_456_789 + n, 1_600_000_000_987_654_321 + n),
                 follow_symlinks=False)
    return src


def view(stacko: Runner, image: str) -> Path:
    return Path(stacko("edit-image", "--read-only", image).out)


def test_a_directory_imports_as_one_layer_with_everything_kept(stacko: Runner, root: Path,
                                                                workdir: Path) -> None:
    src = chroot_like(workdir / "chroot")
    r = stacko("import-image", "deb12", str(src))
    assert r.stdout == ""
    images = json.loads(stacko("list-images", "--json").out)
    assert [i["name"] for i in images] == ["deb12"] and images[0]["parent"] is None
    seen = view(stacko, "deb12")
    assert describe(seen) == describe(src), diff_trees(describe(seen), describe(src))
    # setuid kept after chown, the capability kept after chown, the link not followed
    assert os.stat(seen / "usr" / "bin" / "su").st_mode & 0o7777 == 0o4755
    assert os.getxattr(seen / "usr" / "bin" / "ping", "security.capability") == CAP_NET_RAW
    assert os.readlink(seen / "usr" / "bin" / "passwd-link") == "/etc/passwd"
    assert os.stat(seen / "usr" / "bin" / "su").st_ino == \
        os.stat(seen / "usr" / "bin" / "su-again").st_ino
    # the layer root has the directory's own attributes
    os.chmod(src, 0o750)
    stacko("import-image", "again", str(src))
    assert stat.S_IMODE(os.stat(view(stacko, "again")).st_mode) == 0o750
    # DIR given as a symlink to the tree: the tree's own attributes, not the link's
    (workdir / "link").symlink_to(src)
    stacko("import-image", "via-link", str(workdir / "link"))
    assert stat.S_IMODE(os.stat(view(stacko, "via-link")).st_mode) == 0o750
    assert describe(view(stacko, "via-link")) == describe(src)
    # the layer is a copy: changing the source changes nothing in the image
    (src / "etc" / "hostname").write_text("changed\n")
    assert (seen / "etc" / "hostname").read_text() == "deb12\n"


def test_a_directory_imports_as_the_tar_of_it_does(stacko: Runner, root: Path,
                                                   workdir: Path) -> None:
    src = chroot_like(workdir / "chroot")
    tar = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(src), "-c", "."],
                         check=True, capture_output=True).stdout
    stacko("import-image", "from-tar", "-", input=tar)
    stacko("import-image", "from-dir", str(src))
    a, b = describe(view(stacko, "from-tar")), describe(view(stacko, "from-dir"))
    assert a == b, diff_trees(a, b)


def test_a_directory_import_has_a_content_manifest(stacko: Runner, root: Path,
                                                   workdir: Path) -> None:
    src = chroot_like(workdir / "chroot")
    stacko("import-image", "deb12", str(src))
    record = json.loads((root / "images.json").read_text())["images"]["deb12"]
    assert record.get("manifest", "").startswith("sha256:")
    assert stacko("verify-image", "deb12").out == ""
    layer = root / "l" / record["layer"]
    (layer / "etc" / "hostname").write_text("tampered\n")
    assert stacko("verify-image", "deb12", rc=1).out == "M /etc/hostname"


def test_a_directory_on_a_parent_and_what_is_not_copied(stacko: Runner, root: Path,
                                                        workdir: Path) -> None:
    stacko("new-image", "base")
    src = workdir / "app"
    (src / "opt").mkdir(parents=True)
    (src / "opt" / "app").write_text("v1")
    os.setxattr(src / "opt", "trusted.overlay.opaque", b"y")    # one mount's, not the file's
    (src / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src / "proc")], check=True)
    (src / "proc" / "1").write_text("a process")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "opt" / "socket"))
        r = stacko("import-image", "app", str(src), "base")
    assert f"{src / 'proc'}" in r.stderr and "not imported" in r.stderr
    assert json.loads(stacko("list-images", "--json").out)[0]["parent"] == "base"
    seen = view(stacko, "app")
    assert sorted(os.listdir(seen)) == ["opt", "proc"]
    assert os.listdir(seen / "proc") == []                        # another filesystem
    assert sorted(os.listdir(seen / "opt")) == ["app"]           # no socket
    layer = Path([i for i in json.loads(stacko("list-images", "--json").out)
                  if i["name"] == "app"][0]["layer"])
    assert "trusted.overlay.opaque" not in os.listxattr(layer / "opt")


def test_a_directory_that_holds_the_state_root(stacko: Runner, root: Path,
                                               workdir: Path) -> None:
    # root is workdir/"state root": the copy must not chase its own staging
    (workdir / "etc").mkdir()
    (workdir / "etc" / "motd").write_text("hi")
    stacko("new-image", "before")
    r = stacko("import-image", "all", str(workdir))
    assert f"the stacko state root inside it, {root}, was not imported" in r.stderr
    seen = view(stacko, "all")
    assert (seen / "etc" / "motd").read_text() == "hi"
    assert os.listdir(seen / "state root") == []


def test_refused_directory_imports_change_nothing(stacko: Runner, root: Path,
                                                  workdir: Path) -> None:
    src = chroot_like(workdir / "chroot")
    stacko("import-image", "deb12", str(src))
    before = snapshot(root)
    assert "exists already" in stacko("import-image", "deb12", str(src), rc=1).stderr
    r = stacko("import-image", "other", str(src), "--ref", "x", rc=2)
    assert "plain directory" in r.stderr
    assert "no image named 'nope'" in stacko("import-image", "other", str(src), "nope",
                                             rc=1).stderr
    assert snapshot(root) == before


def filesystem_usage(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_data_is_cloned_where_the_filesystem_can(stacko: Runner, workdir: Path) -> None:
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is missing: tests/install-deps.sh installs xfsprogs as root")
    image = workdir / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    fs = workdir / "xfs"
    fs.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(fs)], check=True)
    src = fs / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(64 << 20))
    os.sync()
    used = filesystem_usage(fs)
    from conftest import run_stacko
    run_stacko(fs / "root", "import-image", "big", str(src))
    os.sync()
    # 64 MiB imported; a copy would take 64 MiB more, a clone next to nothing
    assert filesystem_usage(fs) - used < 16 << 20
    seen = Path(run_stacko(fs / "root", "edit-image", "--read-only", "big").out)
    assert (seen / "data").read_bytes() == (src / "data").read_bytes()
    run_stacko(fs / "root", "close-image", "big")


# --- free space: refused before writing, as archive imports are ---------------------
@pytest.fixture
def small_disk(workdir: Path):
    """A state root on a 64 MiB ext4 (about 50 MiB free), with one image in it."""
    from powercut import LoopRoot
    with LoopRoot(workdir, size_mb=64) as disk:
        from conftest import run_stacko
        run_stacko(disk.root, "new-image", "base")
        yield disk


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def nothing_left(disk, before: dict, used: int) -> None:
    """Nothing recorded, no staging directory left, no space kept."""
    assert snapshot(disk.root) == before
    tmp = disk.root / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []
    os.sync()
    assert filesystem_usage(disk.mnt) - used < 1 << 20


@pytest.mark.parametrize("kind", ["dense", "sparse", "many"])
def test_a_directory_larger_than_the_free_space_is_refused_before_writing(
        small_disk, workdir: Path, kind: str) -> None:
    """dense: more data than is free; sparse: a file whose holes the copy would
    write out; many: a little data in more files than there are free inodes."""
    from conftest import run_stacko
    src = workdir / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "small").write_text("x")
    if kind == "dense":
        with open(src / "big", "wb") as f:
            for _ in range(80):
                f.write(os.urandom(1 << 20))
    elif kind == "sparse":
        with open(src / "holes", "wb") as f:
            f.truncate(1 << 30)
    else:
        inodes = os.statvfs(small_disk.mnt).f_favail
        many = src / "many"
        many.mkdir()
        for n in range(inodes + 10):
            (many / str(n)).touch()
    before = snapshot(small_disk.root)
    os.sync()
    used = filesystem_usage(small_disk.mnt)
    result = run_stacko(small_disk.root, "import-image", "big", str(src), rc=1)
    assert f"{src} does not fit" in result.stderr, result.stderr
    assert ("inodes are free" if kind == "many" else "are free") in result.stderr
    assert "stacko df" in result.stderr
    nothing_left(small_disk, before, used)


def test_a_directory_that_fits_is_imported_hard_links_once(small_disk, workdir: Path) -> None:
    """30 MiB, linked three times: 30 MiB to copy, not 90, on a disk with about 50."""
    from conftest import run_stacko
    src = workdir / "src"
    src.mkdir()
    data = os.urandom(30 << 20)
    (src / "a").write_bytes(data)
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c")
    assert free_bytes(small_disk.mnt) < 60 << 20
    run_stacko(small_disk.root, "import-image", "linked", str(src), "base")
    seen = Path(run_stacko(small_disk.root, "edit-image", "--read-only", "linked").out)
    assert (seen / "c").read_bytes() == data and os.stat(seen / "a").st_nlink == 3
    run_stacko(small_disk.root, "close-image", "linked")


def test_a_directory_larger_than_the_free_space_is_imported_where_it_is_cloned(
        workdir: Path) -> None:
    """A reflink shares the data: the import needs next to no space, so it is not
    refused for the size of its files."""
    from conftest import run_stacko
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is missing: tests/install-deps.sh installs xfsprogs as root")
    image = workdir / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    fs = workdir / "xfs"
    fs.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(fs)], check=True)
    src = fs / "src"
    src.mkdir()
    chunk = os.urandom(1 << 20)
    with open(src / "data", "wb") as f:
        for _ in range(300):
            f.write(chunk)
    os.sync()
    assert free_bytes(fs) < 300 << 20
    run_stacko(fs / "root", "import-image", "big", str(src))
    seen = Path(run_stacko(fs / "root", "edit-image", "--read-only", "big").out)
    assert os.path.getsize(seen / "data") == 300 << 20
    run_stacko(fs / "root", "close-image", "big")


# --- a rootfs tarball on stdin -----------------------------------------------------
def rootfs_tar(src: Path) -> bytes:
    return subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(src), "-c", "."],
                          check=True, capture_output=True).stdout


@pytest.mark.parametrize("how", ["plain", "gzip", "zstd"])
def test_a_rootfs_tarball_on_stdin_is_streamed(stacko: Runner, root: Path, workdir: Path,
                                               how: str) -> None:
    src = chroot_like(workdir / "chroot")
    data = rootfs_tar(src)
    if how == "gzip":
        data = gzip.compress(data)
    elif how == "zstd":
        data = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout
    # strace shows whether the input was written to a spool file under the root
    trace = workdir / "trace"
    argv = ["strace", "-f", "-e", "trace=openat", "-o", str(trace)]
    if shutil.which("strace") is None:
        argv = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(argv + [sys.executable, "-m", "stacko", "--root", str(root),
                                  "import-image", "deb12", "-"],
                          input=data, capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    if argv:
        assert "input.tar" not in trace.read_text()
    seen = view(stacko, "deb12")
    assert describe(seen) == describe(src), diff_trees(describe(seen), describe(src))


def test_an_archive_on_stdin_is_still_spooled(stacko: Runner, workdir: Path) -> None:
    from ocigen import f, write_layout
    layout = workdir / "layout"
    write_layout(layout, [[f("a", b"a")], [f("b", b"b")]])
    for name, arcname in (("flat", None), ("dotted", ".")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for entry in sorted(os.listdir(layout)):
                tar.add(layout / entry, arcname=entry if arcname is None else f"./{entry}")
        stacko("import-image", name, "-", input=gzip.compress(buf.getvalue()))
        seen = view(stacko, name)
        assert (seen / "a").read_bytes() == b"a" and (seen / "b").read_bytes() == b"b"


def test_a_corrupt_tarball_on_stdin_changes_nothing(stacko: Runner, root: Path,
                                                    workdir: Path) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    src = chroot_like(workdir / "chroot")
    data = gzip.compress(rootfs_tar(src))
    r = stacko("import-image", "cut", "-", input=data[:len(data) // 2], rc=1)
    assert "stacko: error:" in r.stderr and r.stdout == ""
    r = stacko("import-image", "junk", "-", input=b"this is no tar at all" * 100, rc=1)
    assert "not a tar archive" in r.stderr
    assert snapshot(root) == before
