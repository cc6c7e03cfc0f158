"""Durability and content manifests: what they cost, side by side.

* syncfs(2) of the root's filesystem against fsync of every file (8 threads),
  after unpacking the same files: how stacko makes a layer durable.
* import-image with durability (syncfs before recording, manifest) against
  the same import with the sync switched off in-process, and `podman load`
  (which does not sync) of the same archive.
* close-image of an image of SIZE against reading its files once (`cat`).
* verify-image of the same image against `sha256sum` of the same files.

Both sides of every row work on one fresh ext4 on a loop device with direct
I/O (so reads after an eviction come from the disk, not from the host's cache
of the backing file).  Before each timed close, verify, read or hash, the
files' data is written back and dropped from the page cache file by file
(posix_fadvise DONTNEED), so every side reads cold; nothing else on the
machine loses its cache.  SIZE is $STACKO_BENCH_DURABLE_MIB MiB (default 1024).
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import common

TITLE = "durability and content manifests (fresh loop-mounted ext4, cold reads)"
ROUNDS = 3
SIZE_MIB = int(os.environ.get("STACKO_BENCH_DURABLE_MIB", "1024") or "1024")

NO_SYNC = ("import sys; import stacko.durable as d; d.sync_filesystem = lambda path: None; "
           "from stacko.cli import main; sys.exit(main(sys.argv[1:]))")


@contextlib.contextmanager
def loop_ext4(size_mib: int) -> Iterator[Path]:
    """A fresh ext4 in a sparse file on a direct-I/O loop device, mounted."""
    scratch = Path(tempfile.mkdtemp(prefix="stacko-bench-durable-", dir="/tmp"))
    backing, mnt = scratch / "disk.img", scratch / "mnt"
    device = ""
    try:
        with open(backing, "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(backing)], check=True)
        device = subprocess.run(["losetup", "--direct-io=on", "--show", "-f", str(backing)],
                                check=True, capture_output=True, text=True).stdout.strip()
        mnt.mkdir()
        subprocess.run(["mount", device, str(mnt)], check=True)
        yield mnt
    finally:
        common.unmount_under(str(scratch))
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def evict(directory: Path) -> None:
    """Write back and drop the page cache of every file under directory."""
    os.sync()
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def fill(directory: Path, size_mib: int, seed: int = 1) -> None:
    """A mixed image: a quarter in 64 KiB files, the rest in 8 MiB files."""
    rng = random.Random(seed)
    small = (size_mib // 4) * 16            # 64 KiB files
    big = (size_mib - size_mib // 4) // 8   # 8 MiB files
    for n in range(small):
        sub = directory / "small" / f"{n % 64:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n}").write_bytes(rng.randbytes(64 << 10))
    (directory / "big").mkdir(exist_ok=True)
    for n in range(big):
        (directory / "big" / f"b{n}").write_bytes(rng.randbytes(8 << 20))


def seconds(argv: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, env=common.child_env())
    return time.perf_counter() - start


def median(times: List[float]) -> float:
    """The median (docs/bench.md: every table shows medians)."""
    import statistics
    return statistics.median(times)


def run() -> List[Dict[str, object]]:
    common.require_root("bench_durable")
    rows: List[Dict[str, object]] = []
    with loop_ext4(SIZE_MIB * 2 + 2048) as mnt:
        rows += sync_rows(mnt)
        rows += import_rows(mnt)
        rows += content_rows(mnt)
    return rows


# --- syncfs against fsync of every file ---------------------------------------------------
def sync_rows(mnt: Path) -> List[Dict[str, object]]:
    sys.path.insert(0, common.REPO)
    from stacko import durable
    from stacko.formats.layertar import unpack_layer

    tar = Path(tempfile.mkdtemp(prefix="stacko-bench-durable-tar-")) / "r.tar"
    try:
        make_tar(tar, files=3000, size=16 << 10)
        times: Dict[str, List[float]] = {"syncfs": [], "fsync": []}
        for n in range(ROUNDS * 2):
            way = "syncfs" if n % 2 == 0 else "fsync"
            target = mnt / f"unpacked-{n}"
            target.mkdir()
            os.sync()
            with open(tar, "rb") as f:
                unpack_layer(f, str(target))
            start = time.perf_counter()
            if way == "syncfs":
                durable.sync_filesystem(str(mnt))
            else:
                durable.fsync_tree(str(target), workers=8)
            times[way].append(time.perf_counter() - start)
            shutil.rmtree(target)
    finally:
        shutil.rmtree(tar.parent, ignore_errors=True)
    s, f = median(times["syncfs"]), median(times["fsync"])
    return [common.row("make 3,000 unpacked files (47 MiB) durable: syncfs", s,
                       "fsync of every file and directory, 8 threads", f, "s",
                       "choose the faster", s <= f)]


def make_tar(path: Path, files: int, size: int) -> None:
    import io
    import tarfile
    rng = random.Random(7)
    with tarfile.open(path, "w") as tar:
        for n in range(files):
            data = rng.randbytes(size)
            info = tarfile.TarInfo(f"d{n % 30}/f{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# --- import -----------------------------------------------------------------------------
def import_rows(mnt: Path) -> List[Dict[str, object]]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_oci

    archive = mnt / "medium.tar"
    bench_oci.make_archive(archive)
    root = mnt / "import-root"
    argv = {"durable": common.stacko_argv(),
            "no sync": [sys.executable, "-c", NO_SYNC]}
    times: Dict[str, List[float]] = {"durable": [], "no sync": [], "podman": []}
    podman = podman_argv(mnt / "podman")
    for _ in range(ROUNDS):
        for way in ("durable", "no sync"):
            shutil.rmtree(root, ignore_errors=True)
            os.sync()
            times[way].append(seconds(argv[way] + ["--root", str(root), "import-image",
                                                   "medium", str(archive)]))
        if podman is not None:
            subprocess.run(podman + ["rmi", "-a", "-f"], capture_output=True)
            os.sync()
            times["podman"].append(seconds(podman + ["load", "-q", "-i", str(archive)]))
    if podman is not None:
        subprocess.run(podman + ["rmi", "-a", "-f"], capture_output=True)
        common.unmount_under(str(mnt / "podman"))
    shutil.rmtree(root, ignore_errors=True)
    d, n = median(times["durable"]), median(times["no sync"])
    rows = [common.row("import-image, 3 layers, ~3000 files, ~40 MB: durable", d,
                       "the same import without the syncfs", n, "s", "for reference", None)]
    if podman is not None:
        p = median(times["podman"])
        rows.append(common.row("import-image (durable)", d, "podman load (no sync)", p, "s",
                               "stacko <= podman", d <= p))
    else:
        rows.append(common.row("import-image (durable)", d, "podman load: not installed",
                               None, "s", "stacko <= podman", None))
    return rows


def podman_argv(storage: Path) -> Optional[List[str]]:
    """podman with its storage on the loop filesystem (its run root, which holds no
    data, under /tmp: podman refuses one longer than 50 characters)."""
    podman = shutil.which("podman")
    if podman is None:
        return None
    run_root = tempfile.mkdtemp(prefix="sbd-podman-", dir="/tmp")
    argv = [podman, "--root", str(storage), "--runroot", run_root, "--storage-driver", "overlay"]
    probe = subprocess.run(argv + ["images"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"podman cannot run here: {probe.stderr.strip()}", file=sys.stderr)
        return None
    return argv


# --- close-image and verify-image of a big image ---------------------------------------------
def content_rows(mnt: Path) -> List[Dict[str, object]]:
    root = mnt / "root"
    stacko = common.stacko_argv() + ["--root", str(root)]
    common.run(stacko + ["new-image", "big"])
    edit = Path(common.run(stacko + ["edit-image", "big"]).stdout.decode().strip())
    fill(edit, SIZE_MIB)
    common.run(stacko + ["close-image", "big"])
    layer = next(p for p in (root / "l").iterdir())
    files = sorted(str(p) for p in layer.rglob("*") if p.is_file())
    close: List[float] = []
    read: List[float] = []
    verify: List[float] = []
    sha: List[float] = []
    for _ in range(ROUNDS):
        common.run(stacko + ["edit-image", "big"])
        evict(layer)
        close.append(seconds(stacko + ["close-image", "big"]))
        evict(layer)
        read.append(cat_files(files))
        evict(layer)
        verify.append(seconds(stacko + ["verify-image", "big"]))
        evict(layer)
        sha.append(hash_files(files))
    size = f"{SIZE_MIB} MiB" if SIZE_MIB < 1024 else f"{SIZE_MIB // 1024} GiB"
    c, r, v, s = median(close), median(read), median(verify), median(sha)
    return [
        common.row(f"close-image of a {size} image (cold)", c, "cat of its files (cold)", r,
                   "s", "ratio <= 2", c <= 2 * r),
        common.row(f"verify-image of a {size} image (cold)", v, "sha256sum of its files (cold)",
                   s, "s", "ratio <= 1.2", v <= 1.2 * s),
    ]


def _xargs(tool: str, files: List[str]) -> float:
    data = b"\0".join(f.encode() for f in files) + b"\0"
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", tool], input=data, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def cat_files(files: List[str]) -> float:
    return _xargs("cat", files)


def hash_files(files: List[str]) -> float:
    return _xargs("sha256sum", files)


if __name__ == "__main__":
    for r in run():
        print(r)
