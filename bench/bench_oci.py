"""Benchmark: import and export of a medium OCI image, beside podman.

The image (3 layers, about 3000 files, about 40 MB) is generated here as an
oci-archive; `stacko import-image` and `podman load` read the same archive,
`stacko export-image` and `podman save --format oci-archive` write it back.
podman runs with a throw-away storage root; without podman the baseline is None.
stacko's import ends with a syncfs (nothing is recorded before its data is
durable); podman load syncs nothing, so a second row puts `sync -f` beside it.
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
from pathlib import Path
from typing import Dict, List

import common

TITLE = "OCI import and export (medium image: 3 layers, ~3000 files, ~40 MB)"
ROUNDS = 5            # interleaved rounds, after one warm-up round


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


def run() -> List[dict]:
    """Both sides on one fresh loop-mounted ext4, interleaved round by round, each
    run into a store of its own (nothing is deleted between runs: ext4 creates
    files several times slower in a block group that has just seen mass
    deletes, which would favour whichever side ran first)."""
    common.require_root("bench_oci")
    runroots: List[str] = []
    try:
        with common.loop_ext4("oci") as fs:
            return measure(Path(fs), runroots)
    finally:
        for runroot in runroots:
            subprocess.run(["umount", "-R", "-l", runroot], capture_output=True)
            shutil.rmtree(runroot, ignore_errors=True)


def measure(fs: Path, runroots: List[str]) -> List[dict]:
    stacko = common.stacko_argv()      # the console script, as a user runs it
    archive = fs / "medium.tar"
    make_archive(archive)
    counter = iter(range(10_000))
    have_podman = shutil.which("podman") is not None

    def fresh(kind: str) -> Path:
        return fs / f"{kind}-{next(counter)}"

    def podman(store: Path) -> List[str]:
        # podman refuses a run root longer than 50 characters; it holds no image data.
        runroot = tempfile.mkdtemp(prefix="sbo-", dir="/tmp")
        runroots.append(runroot)
        return ["podman", "--root", str(store), "--runroot", runroot,
                "--storage-driver", "overlay"]

    def sync() -> float:
        return common.timed(lambda: common.run(["sync", "-f", str(fs)]))

    def import_stacko() -> Dict[str, float]:
        root = str(fresh("stacko"))
        return {"stacko import": common.timed(lambda: common.run(
            stacko + ["--root", root, "import-image", "medium", str(archive)]))}

    def import_podman() -> Dict[str, float]:
        base = podman(fresh("podman"))
        loaded = common.timed(lambda: common.run(base + ["load", "-q", "-i", str(archive)]))
        return {"podman load": loaded, "podman load+sync": loaded + sync()}

    # The floor of unpacking: GNU tar of each layer blob, then sync -f (stacko's
    # import ends with a syncfs, so both sides make their files durable).
    blobs = fs / "blobs"
    blobs.mkdir()
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))          # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(                      # type: ignore[arg-type]
            "blobs/sha256/" + index["manifests"][0]["digest"][7:]))
        layer_blobs = []
        for layer in manifest["layers"]:
            target = blobs / layer["digest"][7:]
            target.write_bytes(tar.extractfile("blobs/sha256/" + layer["digest"][7:]).read())  # type: ignore[union-attr]
            layer_blobs.append(target)

    def untar() -> Dict[str, float]:
        base = fresh("tar")

        def extract() -> None:
            for n, blob in enumerate(layer_blobs):
                target = base / str(n)
                target.mkdir(parents=True)
                common.run(["tar", "-C", str(target), "-xzf", str(blob)])
            common.run(["sync", "-f", str(fs)])
        return {"tar": common.timed(extract)}

    source = str(fresh("stacko"))
    common.run(stacko + ["--root", source, "import-image", "medium", str(archive)])

    def export_stacko() -> Dict[str, float]:
        out = str(fresh("stacko-export")) + ".tar"
        return {"stacko export": common.timed(lambda: common.run(
            stacko + ["--root", source, "export-image", "medium", out]))}

    cases = {"stacko import": import_stacko, "stacko export": export_stacko, "tar": untar}
    if have_podman:
        store = podman(fresh("podman"))
        common.run(store + ["load", "-q", "-i", str(archive)])

        def export_podman() -> Dict[str, float]:
            out = str(fresh("podman-export")) + ".tar"
            return {"podman save": common.timed(lambda: common.run(
                store + ["save", "--format", "oci-archive", "-o", out, "medium"]))}

        cases.update({"podman load": import_podman, "podman save": export_podman})
    samples = common.interleave(cases, common.repeats(ROUNDS), warmup=1)
    rows = []
    mine, floor = (common.median_ms(samples[k]) / 1000 for k in ("stacko import", "tar"))
    rows.append(common.row("import, beside GNU tar -xzf of each layer + sync -f", mine,
                           "tar -xzf + sync -f", floor, "s", "stacko <= 1.0x tar",
                           mine <= floor, n=len(samples["tar"])))
    # Issue 21: an import <= 0.9x podman load; an export no slower than podman save.
    for what, ours, theirs, name, factor in (
            ("import medium image", "stacko import", "podman load", "podman load", 0.9),
            ("import, beside podman load + syncfs", "stacko import", "podman load+sync",
             "podman load + sync -f", 0.9),
            ("export medium image", "stacko export", "podman save",
             "podman save --format oci-archive", 1.0)):
        mine = common.median_ms(samples[ours]) / 1000
        base = common.median_ms(samples[theirs]) / 1000 if theirs in samples else None
        rows.append(common.row(what, mine, name if base is not None else None, base, "s",
                               f"stacko <= {factor:.1f}x podman",
                               None if base is None else mine <= factor * base,
                               n=len(samples[ours])))
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
