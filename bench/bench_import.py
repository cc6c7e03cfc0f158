"""Benchmark: import-image of a rootfs from stdin, from a file and from a directory.

One rootfs (about 2000 files, about 100 MB, half of it compressible) lives on a
fresh loop-mounted ext4, beside the state roots, so both sides of each row
read and write the same filesystem:

* a plain tar on stdin beside the same tar as a file (the file is read in place);
* a gzip tar on stdin beside the same gzip tar as a file;
* the directory itself beside `tar -C DIR -c . | stacko import-image NAME -`.

The loop file lives in /dev/shm when it has room, so that a disk shared with
other work adds no noise.  Each row is the best of ROUNDS runs (cases
interleaved), in wall-clock seconds, on the "(CPU)" rows in CPU seconds of stacko
and of the tar that feeds it, and on the "(written)" rows in megabytes that
ext4 wrote for the import (its lifetime_write_kbytes).

BENCH_STACKO_CHECKOUT=/path/to/another/checkout times that checkout's stacko
instead, for a before/after comparison of the same rows.
"""
from __future__ import annotations

import gzip
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Tuple

import common

TITLE = "import-image of a rootfs: stdin vs file, directory vs tar pipe (~100 MB, 2000 files)"
ROUNDS = 7


def make_tree(top: str, files: int = 2000, size: int = 50_000) -> None:
    rng = random.Random(7)
    for n in range(files):
        directory = os.path.join(top, f"d{n % 40:02d}")
        os.makedirs(directory, exist_ok=True)
        length = rng.randint(size // 2, size * 3 // 2)
        data = rng.randbytes(length) if n % 2 else (b"config line %d\n" % n) * (length // 16)
        with open(os.path.join(directory, f"f{n:05d}"), "wb") as f:
            f.write(data)


def stacko(root: str, *args: str, stdin: object = None, pipe_from: List[str] = ()) -> None:
    # cwd "/": `python -m` puts the working directory first on the path.
    env = common.child_env({"PYTHONPATH": os.environ.get("BENCH_STACKO_CHECKOUT",
                                                         common.REPO)})
    argv = [sys.executable, "-m", "stacko", "--root", root, *args]
    if pipe_from:
        producer = subprocess.Popen(list(pipe_from), stdout=subprocess.PIPE)
        proc = subprocess.run(argv, stdin=producer.stdout, env=env, capture_output=True, cwd="/")
        producer.stdout.close()  # type: ignore[union-attr]
        producer.wait()
    else:
        proc = subprocess.run(argv, stdin=stdin, env=env, capture_output=True, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace')}")


def written_counter(fs: str) -> Callable[[], int]:
    """Kilobytes ext4 has written to the filesystem at fs since it was mounted."""
    dev = os.stat(fs).st_dev
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[2] == f"{os.major(dev)}:{os.minor(dev)}":
                source = fields[fields.index("-") + 2]
                break
        else:
            raise RuntimeError(f"{fs} is not in the mount table")
    counter = f"/sys/fs/ext4/{os.path.basename(source)}/lifetime_write_kbytes"

    def read() -> int:
        with open(counter) as f:
            return int(f.read())
    return read


def run() -> List[dict]:
    common.require_root("bench_import")
    # The loop file in RAM where there is room: the disk under /tmp is shared
    # with whatever else runs, and its noise would drown the differences.
    # BENCH_LOOP_DIR puts it elsewhere (on a disk, to see what a spool file costs there).
    where = os.environ.get("BENCH_LOOP_DIR")
    if where is None and os.path.isdir("/dev/shm"):
        shm = os.statvfs("/dev/shm")
        where = "/dev/shm" if shm.f_bavail * shm.f_frsize > 2 << 30 else None
    with tempfile.TemporaryDirectory(prefix="stacko-bench-import-", dir=where) as scratch:
        image = os.path.join(scratch, "fs.img")
        with open(image, "wb") as f:
            f.truncate(3 << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        fs = os.path.join(scratch, "fs")
        os.mkdir(fs)
        subprocess.run(["mount", "-o", "loop", image, fs], check=True)
        try:
            return measure(fs)
        finally:
            common.unmount_under(fs)          # fs itself too


def measure(fs: str) -> List[dict]:
    tree = os.path.join(fs, "rootfs")
    make_tree(tree)
    plain = os.path.join(fs, "rootfs.tar")
    subprocess.run(["tar", "-C", tree, "-cf", plain, "."], check=True)
    packed = os.path.join(fs, "rootfs.tar.gz")
    with open(plain, "rb") as f, gzip.open(packed, "wb", compresslevel=1) as out:
        shutil.copyfileobj(f, out, 1 << 20)
    roots = os.path.join(fs, "roots")

    os.mkdir(roots)

    written = written_counter(fs)

    def case(*args: str, stdin_path: str = "", pipe_from: List[str] = ()) \
            -> Callable[[], Tuple[float, float, float]]:
        def once() -> Tuple[float, float, float]:
            """(wall s, CPU s, MB written): the CPU time of stacko and of the tar
            feeding it, which other work on the machine inflates much less than
            wall time; and what the filesystem wrote (a spool file shows there)."""
            root = tempfile.mkdtemp(dir=roots)
            os.sync()
            before, kb = resource.getrusage(resource.RUSAGE_CHILDREN), written()
            try:
                if stdin_path:
                    with open(stdin_path, "rb") as f:
                        wall = common.timed(lambda: stacko(root, *args, stdin=f))
                else:
                    wall = common.timed(lambda: stacko(root, *args, pipe_from=pipe_from))
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                os.sync()
                return (wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                        (written() - kb) / 1024)
            finally:
                shutil.rmtree(root)
        return once

    cases = {
        "tar stdin": case("import-image", "x", "-", stdin_path=plain),
        "tar file": case("import-image", "x", plain),
        "gz stdin": case("import-image", "x", "-", stdin_path=packed),
        "gz file": case("import-image", "x", packed),
        "dir": case("import-image", "x", tree),
        "dir via tar": case("import-image", "x", "-", pipe_from=["tar", "-C", tree, "-c", "."]),
    }
    samples: Dict[str, List[Tuple[float, float, float]]] = {name: [] for name in cases}
    for _ in range(1 + ROUNDS):                  # the first round fills the page cache
        for name, func in list(cases.items()):
            try:
                samples[name].append(func())
            except RuntimeError as e:            # a stacko without directory import
                print(f"bench_import: {name}: {e}", file=sys.stderr)
                del cases[name]
    rows = []
    for n, kind, unit in ((0, "", "s"), (1, " (CPU)", "s"), (2, " (written)", "MB")):
        best = {name: min(v[n] for v in samples[name][1:]) if name in cases else float("nan")
                for name in samples}
        rows += [
            common.row("rootfs tar on stdin" + kind, best["tar stdin"], "same tar as a file",
                       best["tar file"], unit, "stdin <= 1.2x file",
                       best["tar stdin"] <= 1.2 * best["tar file"]),
            common.row("gzip rootfs tar on stdin" + kind, best["gz stdin"],
                       "same .tar.gz as a file", best["gz file"], unit, "stdin <= 1.2x file",
                       best["gz stdin"] <= 1.2 * best["gz file"]),
            common.row("directory" + kind, best["dir"], "tar -c DIR | import-image -",
                       best["dir via tar"], unit, "directory <= tar pipe",
                       best["dir"] <= best["dir via tar"]),
        ]
    return rows

if __name__ == "__main__":
    import json
    for r in run():
        print(json.dumps(r))
