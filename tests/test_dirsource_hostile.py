"""import-image NAME DIR of a tree that its owner changes while it is read, and
imports that would use up the inodes of the root's filesystem (issue 18, items
1, 10, 11 and 13).

The races are made deterministic without any hook in stacko: a fanotify
permission event (``Gate``) holds stacko inside its open(2) or read of one
file of the tree, the test changes the tree, and only then lets the call go
on.  So the change lands exactly between stacko's listing of a directory and
its opening of the entries listed."""
from __future__ import annotations

import ctypes
import gzip
import io
import json
import os
import re
import select
import stat
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Callable, List

import pytest

from conftest import Runner, run_stacko, snapshot
from registryd import available as registry_available
from registryfix import registry  # noqa: F401  (the fixture)

pytestmark = pytest.mark.mounts

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x1, 0x2, 0x4
FAN_ACCESS_PERM, FAN_OPEN_PERM = 0x00020000, 0x00010000
FAN_MARK_ADD, FAN_ALLOW = 0x1, 0x1
AT_FDCWD = -100
EVENT = struct.Struct("IBBHQii")     # struct fanotify_event_metadata


class Gate:
    """Holds the first open (event="open") or read ("read") of one file until
    action() has run, then lets every call go on."""

    def __init__(self, path: Path, action: Callable[[], None], event: str = "open") -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                       ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_CONTENT,
                                     os.O_RDONLY | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        mask = FAN_OPEN_PERM if event == "open" else FAN_ACCESS_PERM
        if libc.fanotify_mark(self.fd, FAN_MARK_ADD, mask, AT_FDCWD, os.fsencode(path)) != 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            # EINVAL: a kernel without CONFIG_FANOTIFY_ACCESS_PERMISSIONS
            pytest.skip(f"fanotify permission events: {os.strerror(errno)}")
        self.action = action
        self.fired = False
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while not self.stop:
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            while data:
                length, _, _, _, _, fd, _ = EVENT.unpack_from(data)
                try:
                    if not self.fired:
                        self.fired = True
                        self.action()
                finally:
                    os.write(self.fd, struct.pack("iI", fd, FAN_ALLOW))
                    os.close(fd)
                data = data[length:]

    def __enter__(self) -> "Gate":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join()
        os.close(self.fd)       # answers whatever is left with "allow"


def import_dir(root: Path, name: str, src: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI, with a timeout of its own: a hung open must fail the test fast."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run([sys.executable, "-m", "stacko", "--root", str(root), "import-image",
                           name, str(src)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def nothing_left(root: Path, before: dict) -> None:
    assert snapshot(root) == before
    tmp = root / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []


def secret_dir(workdir: Path) -> Path:
    secret = workdir / "secret"
    secret.mkdir(mode=0o700)
    (secret / "shadow").write_text("root:SECRET\n")
    os.chmod(secret / "shadow", 0o600)
    return secret


# --- item 1: swapped entries ---------------------------------------------------------
@pytest.mark.parametrize("trigger", ["0-before", "z-after"])
def test_a_directory_swapped_for_a_symlink_is_never_followed(stacko: Runner, root: Path,
                                                             workdir: Path, trigger: str) -> None:
    """`mv a a.old; ln -s SECRET a` while the import copies a file listed beside
    a/ (before it in the listing, or after it): refused, nothing recorded."""
    secret = secret_dir(workdir)
    src = workdir / "tree"
    (src / "a").mkdir(parents=True)
    (src / "a" / "mine").write_text("mine\n")
    for name in ("0-before", "z-after"):
        (src / name).write_bytes(os.urandom(1 << 20))
    stacko("new-image", "base")
    before = snapshot(root)

    def swap() -> None:
        os.rename(src / "a", src / "a.old")
        os.symlink(secret, src / "a")
    with Gate(src / trigger, swap) as gate:
        r = import_dir(root, "img", src)
    assert gate.fired
    if r.returncode == 0:
        seen = Path(stacko("edit-image", "--read-only", "img").out)
        leaked = (seen / "a" / "shadow").exists() if (seen / "a").is_dir() else False
        pytest.fail(f"the import went through; the secret was {'' if leaked else 'not '}copied")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("stacko: error: ")
    assert f"{str(src / 'a')!r} changed while it was read" in r.stderr, r.stderr
    assert "no longer a directory" in r.stderr
    nothing_left(root, before)


def test_a_directory_swapped_for_another_directory_is_refused(stacko: Runner, root: Path,
                                                              workdir: Path) -> None:
    """The same with a real directory put in its place (`mv a a.old; mv SECRET a`):
    the inode is not the one listed."""
    secret = secret_dir(workdir)
    src = workdir / "tree"
    (src / "a").mkdir(parents=True)
    (src / "0-before").write_text("x")
    stacko("new-image", "base")
    before = snapshot(root)

    def swap() -> None:
        os.rename(src / "a", workdir / "a.old")
        os.rename(secret, src / "a")
    with Gate(src / "0-before", swap):
        r = import_dir(root, "img", src)
    assert r.returncode == 1, r.stderr
    assert f"{str(src / 'a')!r} changed while it was read (another directory took its " \
           "place)" in r.stderr
    nothing_left(root, before)


def test_a_file_swapped_for_a_fifo_does_not_hang(stacko: Runner, root: Path,
                                                 workdir: Path) -> None:
    """A file listed as regular and a FIFO when opened: opened O_NONBLOCK, found
    to be another inode of another type, refused at once."""
    src = workdir / "tree"
    src.mkdir()
    (src / "0-before").write_text("x")
    (src / "data").write_text("data\n")
    stacko("new-image", "base")
    before = snapshot(root)

    def swap() -> None:
        os.unlink(src / "data")
        os.mkfifo(src / "data")
    with Gate(src / "0-before", swap):
        r = import_dir(root, "img", src, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"{str(src / 'data')!r} changed while it was read (it is no longer the regular " \
           "file that was listed)" in r.stderr, r.stderr
    nothing_left(root, before)
    # A FIFO that was a FIFO when listed is copied as one, never opened.
    r = import_dir(root, "img", src, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = Path(stacko("edit-image", "--read-only", "img").out)
    assert stat.S_ISFIFO(os.lstat(seen / "data").st_mode)


def test_a_file_removed_before_it_is_opened_is_named(stacko: Runner, root: Path,
                                                     workdir: Path) -> None:
    src = workdir / "tree"
    src.mkdir()
    (src / "0-before").write_text("x")
    (src / "gone").write_text("x")
    stacko("new-image", "base")
    before = snapshot(root)
    with Gate(src / "0-before", lambda: os.unlink(src / "gone")):
        r = import_dir(root, "img", src)
    assert r.returncode == 1
    assert f"{str(src / 'gone')!r} changed while it was read (it was removed)" in r.stderr
    nothing_left(root, before)


def open_deep(top: Path, names: List[str], flags: int = os.O_RDONLY) -> int:
    """Open top/names…, one name at a time: the whole path is longer than PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names[:-1]:
        down = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = down
    try:
        return os.open(names[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def test_a_tree_deeper_than_path_max_imports(stacko: Runner, root: Path, workdir: Path) -> None:
    """24 directories of 250 characters: a path of 6,000 bytes to the deepest file,
    which tar archives; the image holds it, its mode and a hard link to it."""
    src = workdir / "tree"
    src.mkdir()
    names = [f"{n:02d}" + "d" * 248 for n in range(24)]
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, 0o750, dir_fd=fd)
        down = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = down
    out = os.open("deep", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
    os.write(out, b"at the bottom\n")
    os.close(out)
    os.symlink("deep", "link", dir_fd=fd)
    os.link("deep", os.path.join(src, "hard"), src_dir_fd=fd)
    os.close(fd)
    assert len(str(src)) + sum(len(n) + 1 for n in names) > 4096
    r = stacko("import-image", "deep", str(src))
    assert r.stdout == ""
    seen = Path(stacko("edit-image", "--read-only", "deep").out)
    fd = open_deep(seen, names + ["deep"])
    try:
        assert os.read(fd, 100) == b"at the bottom\n"
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_nlink == 2
        assert st.st_ino == os.stat(seen / "hard").st_ino
    finally:
        os.close(fd)
    fd = open_deep(seen, names + ["."], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.readlink("link", dir_fd=fd) == "deep"
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o750
    finally:
        os.close(fd)
    # Its content manifest was built (the layer is walked by short paths too),
    # and verify-image reads it back, the deepest file included.
    assert stacko("verify-image", "deep").out == ""
    stacko("close-image", "deep")
    layer = json.loads(stacko("list-images", "--json").out)[0]["layer"]
    fd = open_deep(Path(layer), names + ["deep"], os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"changed\n")
    os.close(fd)
    shown = "/" + "/".join(names) + "/deep"
    assert stacko("verify-image", "deep", rc=1).out.splitlines() == [f"M {shown}", "M /hard"]


# --- item 10: a file that grows while it is copied ------------------------------------
def test_a_file_that_grows_while_it_is_copied_is_refused(stacko: Runner, root: Path,
                                                         workdir: Path) -> None:
    """The file grows by 16 MiB at the first read of its copy: no more than the
    8 MiB it had when opened (what the budget was charged) is copied, and the
    import fails, naming it; nothing is recorded, the staging is gone."""
    src = workdir / "tree"
    src.mkdir()
    (src / "log").write_bytes(os.urandom(8 << 20))
    stacko("new-image", "base")
    before = snapshot(root)

    def grow() -> None:
        with open(src / "log", "ab") as f:
            f.write(os.urandom(16 << 20))
    with Gate(src / "log", grow, event="read") as gate:
        r = import_dir(root, "img", src)
    assert gate.fired
    assert r.returncode == 1, r.stderr
    assert f"{str(src / 'log')!r} changed while it was read (its size went from 8388608 " \
           "to 25165824 bytes while it was copied)" in r.stderr, r.stderr
    nothing_left(root, before)


# --- item 13: the state root itself ---------------------------------------------------
def test_the_state_root_and_what_is_inside_it_are_refused(stacko: Runner, root: Path,
                                                          workdir: Path) -> None:
    stacko("new-image", "base")
    (workdir / "to-tmp").symlink_to(root / "tmp")
    bind = workdir / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(bind)], check=True)
    before = snapshot(root)
    r = stacko("import-image", "x", str(root), rc=2)
    assert f"cannot import {str(root)!r}: it is the stacko state root" in r.stderr
    for inside in (root / "tmp", root / "l", workdir / "to-tmp", bind / "tmp", bind):
        r = stacko("import-image", "x", str(inside), rc=2)
        assert f"cannot import {str(inside)!r}: it is " in r.stderr, r.stderr
        assert "state root" in r.stderr and "outside the state root" in r.stderr
    assert f"inside the stacko state root {str(root)!r}" in \
        stacko("import-image", "x", str(bind / "tmp"), rc=2).stderr
    nothing_left(root, before)


# --- item 11: inodes ------------------------------------------------------------------
@pytest.fixture
def few_inodes(workdir: Path):
    """A state root on a 64 MiB ext4 with 2,048 inodes, and one image in it."""
    backing, mnt = workdir / "disk.img", workdir / "disk"
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "2048", str(backing)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], check=True)
    try:
        run_stacko(mnt / "root", "new-image", "base")
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def empty_dirs_tar_gz(count: int, files: int = 0) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for n in range(count):
            info = tarfile.TarInfo(f"d{n}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for n in range(files):
            tar.addfile(tarfile.TarInfo(f"f{n}"), io.BytesIO(b""))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize("what", ["dirs", "files", "implicit"])
def test_an_archive_of_more_entries_than_free_inodes_is_refused(few_inodes: Path,
                                                                workdir: Path, what: str) -> None:
    root = few_inodes / "root"
    free = os.statvfs(few_inodes).f_favail
    assert free < 2048
    if what == "implicit":      # directories no member names: a/0/x, a/1/x …
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for n in range(free + 10):
                tar.addfile(tarfile.TarInfo(f"a{n}/x"), io.BytesIO(b""))
        data = gzip.compress(raw.getvalue())
    else:
        data = empty_dirs_tar_gz(free + 10) if what == "dirs" else \
            empty_dirs_tar_gz(0, files=free + 10)
    archive = workdir / "many.tar.gz"
    archive.write_bytes(data)
    assert len(data) < 64 << 10
    before = snapshot(root)
    r = run_stacko(root, "import-image", "many", str(archive), rc=1)
    assert "does not fit on the filesystem of" in r.stderr, r.stderr
    assert re.search(r"than the \d+ inodes that were free", r.stderr), r.stderr
    assert "stacko df" in r.stderr
    nothing_left(root, before)
    assert os.statvfs(few_inodes).f_favail >= free - 1     # ROOT/tmp, made by the import
    # What fits is imported.
    (workdir / "some.tar.gz").write_bytes(empty_dirs_tar_gz(free // 4))
    run_stacko(root, "import-image", "some", str(workdir / "some.tar.gz"))


@pytest.mark.skipif(not registry_available(), reason="docker-registry is needed "
                    "(tests/install-deps.sh)")
def test_a_pull_of_more_entries_than_free_inodes_is_refused(few_inodes: Path, workdir: Path,
                                                           registry) -> None:
    """The same layer pushed to a registry and pulled: refused the same way."""
    root = few_inodes / "root"
    free = os.statvfs(few_inodes).f_favail
    (workdir / "many.tar.gz").write_bytes(empty_dirs_tar_gz(free + 10))
    elsewhere = workdir / "big root"
    run_stacko(elsewhere, "import-image", "many", str(workdir / "many.tar.gz"))
    ref = f"{registry.host}/inodes/many:1"
    run_stacko(elsewhere, "push-image", "many", ref, "--tls-verify=false")
    before = snapshot(root)
    r = run_stacko(root, "pull-image", "many", ref, "--tls-verify=false", rc=1)
    assert "does not fit on the filesystem of" in r.stderr, r.stderr
    assert re.search(r"than the \d+ inodes that were free", r.stderr), r.stderr
    nothing_left(root, before)
    assert os.statvfs(few_inodes).f_favail >= free - 1     # ROOT/tmp, made by the pull


def test_a_directory_that_grows_after_it_was_measured_is_charged_again(
        few_inodes: Path, workdir: Path) -> None:
    """The tree fits when measured; 3,000 directories appear before the copy
    reaches them: the copy charges each one, and stops before the inodes run out."""
    root = few_inodes / "root"
    free = os.statvfs(few_inodes).f_favail
    src = workdir / "tree"
    (src / "later").mkdir(parents=True)
    (src / "0-first").write_text("x")
    before = snapshot(root)

    def grow() -> None:
        for n in range(free + 10):
            os.mkdir(src / "later" / str(n))
    with Gate(src / "0-first", grow):
        r = import_dir(root, "tree", src)
    assert r.returncode == 1, r.stderr
    assert re.search(r"than the \d+ inodes that were free", r.stderr), r.stderr
    nothing_left(root, before)
    assert os.statvfs(few_inodes).f_favail >= free - 1     # ROOT/tmp, made by the import


def test_the_budget_charges_every_member_an_inode(tmp_path: Path) -> None:
    """Without mounts: every kind of member takes an inode from the budget, and
    all but regular files a block."""
    from stacko.formats import layertar, spacebudget
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind in (("d", tarfile.DIRTYPE), ("d/s", tarfile.SYMTYPE),
                           ("d/f", tarfile.FIFOTYPE), ("e/implicit/x", tarfile.REGTYPE),
                           (".wh.gone", tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "target"
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    budget = spacebudget.SpaceBudget(str(tmp_path))
    budget.left, budget.inodes = 1 << 30, 1000
    target = tmp_path / "layer"
    target.mkdir()
    assert budget.inodes_free >= 0
    layertar.unpack_layer(io.BytesIO(raw.getvalue()), str(target), budget=budget)
    # d, d/s, d/f, e, e/implicit, e/implicit/x, the whiteout
    assert budget.inodes == 1000 - 7
    assert budget.left == (1 << 30) - 6 * spacebudget.BLOCK
    budget.inodes = 3
    with pytest.raises(spacebudget.NoSpace, match="than the .* inodes that were free"):
        (tmp_path / "again").mkdir()
        layertar.unpack_layer(io.BytesIO(raw.getvalue()), str(tmp_path / "again"),
                              budget=budget)
