"""Benchmark: import and export of a medium OCI image, beside podman.

The image (3 layers, about 3000 files, about 40 MB) is generated here as an
oci-archive; `stacko import-image` and `podman load` read the same archive,
`stacko export-image` and `podman save --format oci-archive` write it back.
podman runs with a throw-away storage root; without podman the baseline is None.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import common

TITLE = "OCI import and export (medium image: 3 layers, ~3000 files, ~40 MB)"
REPEAT = 3


def _layer(seed: int, files: int, size: int) -> bytes:
    """A layer tar of files of mixed compressibility (text-like and random)."""
    rng = random.Random(seed)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = [f"d{seed}/{a:02d}" for a in range(files // 100 + 1)]
        for name in [f"d{seed}"] + dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tar.addfile(info)
        for n in range(files):
            length = rng.randint(size // 4, size * 7 // 4)
            if n % 3:
                data = (b"line %d of a config-like text file\n" % n) * (length // 32 + 1)
            else:
                data = rng.randbytes(length) if hasattr(rng, "randbytes") else os.urandom(length)
            info = tarfile.TarInfo(f"{dirs[n // 100]}/f{n:05d}")
            info.size, info.mode, info.mtime = len(data[:length]), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data[:length]))
    return out.getvalue()


def make_archive(target: Path) -> None:
    tars = [_layer(seed, files, 13_000) for seed, files in ((1, 2000), (2, 800), (3, 200))]
    common.write_oci_archive(target, tars, "medium",
                             compress=lambda t: gzip.compress(t, compresslevel=6, mtime=0),
                             media_type="application/vnd.oci.image.layer.v1.tar+gzip")


def timed(argv: Sequence[str], setup=None) -> float:
    """Best wall-clock time of REPEAT runs (setup() runs before each, untimed)."""
    best = float("inf")
    for _ in range(REPEAT):
        if setup is not None:
            setup()
        start = time.perf_counter()
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        best = min(best, time.perf_counter() - start)
    return best


def podman_argv(base: Path) -> Optional[List[str]]:
    podman = shutil.which("podman")
    if podman is None:
        return None
    for driver in ("overlay", "vfs"):
        argv = [podman, "--root", str(base / f"storage-{driver}"),
                "--runroot", str(base / f"run-{driver}"), "--storage-driver", driver]
        probe = subprocess.run(argv + ["images"], capture_output=True)
        if probe.returncode == 0:
            return argv
    return None


def run() -> List[dict]:
    stacko = common.stacko_argv()      # the console script, as a user runs it
    with tempfile.TemporaryDirectory(prefix="stacko-bench-oci-") as scratch:
        base = Path(scratch)
        archive = base / "medium.tar"
        make_archive(archive)
        root = base / "root"

        def fresh_root() -> None:
            shutil.rmtree(root, ignore_errors=True)

        t_import = timed(stacko + ["--root", str(root), "import-image", "medium", str(archive)],
                         fresh_root)
        out = base / "export.tar"
        t_export = timed(stacko + ["--root", str(root), "export-image", "medium", str(out)])
        podman = podman_argv(base)
        p_import = p_export = None
        if podman is not None:
            def fresh_storage() -> None:
                subprocess.run(podman + ["rmi", "-a", "-f"], capture_output=True)
            p_import = timed(podman + ["load", "-q", "-i", str(archive)], fresh_storage)
            p_export = timed(podman + ["save", "--format", "oci-archive", "-o",
                                       str(base / "podman.tar"), "medium"],
                             lambda: (base / "podman.tar").unlink(missing_ok=True))
            subprocess.run(podman + ["rmi", "-a", "-f"], capture_output=True)
            subprocess.run(["umount", "-R", str(base / "storage-overlay")], capture_output=True)
    rows = []
    for what, ours, theirs, name in (("import medium image", t_import, p_import, "podman load"),
                                     ("export medium image", t_export, p_export,
                                      "podman save --format oci-archive")):
        rows.append({"what": what, "stacko": round(ours, 3), "baseline_name": name,
                     "baseline": None if theirs is None else round(theirs, 3), "unit": "s",
                     "goal": "stacko <= podman",
                     "met": None if theirs is None else ours <= theirs})
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
