"""Gapless switching, and stacko's stack mounts beside podman's.

* Gap: a reader thread reads a file in a mounted stackpoint in a tight loop
  while the real CLI cuts the stackpoint over and falls back 100 times each;
  a read that fails or finds the empty directory is a failed read.  The
  baseline is the same with ``STACKO_MOUNT_API=legacy`` (unmount, then mount;
  its switches also fail while the reader has the file open: counted apart).
* Cutover + fallback on a stack holding 512 MiB beside one holding 1 MiB: a
  switch builds a mount and moves it, so its cost must not grow with data.
* mount-stackpoint + umount-stackpoint of a 3-layer image beside
  ``podman image mount`` + ``podman image unmount`` of the same archive, and
  the bare kernel floor (fsopen … move_mount + umount2, in-process).
* The deepest stack that mounts: stacko (the kernel's 500) beside podman,
  found by bisection over generated archives.

podman runs with a throw-away storage root and the overlay driver; where it
cannot run, its baselines are None.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import common
from stacko import images, mountapi, overlay, stackpoints
from stacko.state import Store

TITLE = "gapless cutover/fallback, cost vs data, mount vs podman, deepest stack"
SWITCHES = 100
ROUNDS = 12
MOUNT_ROUNDS = 20
MIB = 1 << 20


def run() -> List[Dict[str, object]]:
    common.require_root("bench_gap")
    rows: List[Dict[str, object]] = []
    with common.scratch_root("gap") as scratch:
        store = Store(os.path.join(scratch, "root"))
        rows += timed_section("gap", lambda: gap_rows(store))
        rows += timed_section("size", lambda: size_rows(store))
        podman = Podman.find(Path(scratch))
        try:
            rows += timed_section("podman", lambda: podman_rows(store, Path(scratch), podman))
            rows += timed_section("depth", lambda: depth_rows(store, Path(scratch), podman))
        finally:
            if podman is not None:
                podman.clean()
    return rows


def timed_section(name: str, section: Callable[[], List[Dict[str, object]]]) -> List[Dict[str, object]]:
    started = time.monotonic()
    rows = section()
    print(f"bench_gap: {name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


# --- fixtures --------------------------------------------------------------------
def image_with(store: Store, name: str, files: Dict[str, int], parent: Optional[str] = None,
               content: bytes = b"") -> None:
    """An image whose own layer holds files of the given sizes (written straight
    into the layer: nothing stacks on it yet)."""
    images.new_image(store, name, parent)
    layer = store.layer_path(store.load_images()[name].layer)
    for rel, size in files.items():
        with open(os.path.join(layer, rel), "wb") as f:
            if content:
                f.write(content)
            for _ in range(size // MIB):
                f.write(b"\x5a" * MIB)
            f.write(b"\x5a" * (size % MIB))


def cli(store: Store, *args: str, env: Optional[Dict[str, str]] = None) -> bool:
    argv = common.stacko_argv() + ["--root", store.root, *args]
    proc = subprocess.run(argv, env=common.child_env(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc.returncode == 0


def env_for(mode: str) -> Dict[str, str]:
    return {mountapi.ENV: mode}


# --- the gap -------------------------------------------------------------------------
def gap_rows(store: Store) -> List[Dict[str, object]]:
    with store.locked(exclusive=True):
        image_with(store, "gap-a", {"f": 0}, content=b"A")
        image_with(store, "gap-b", {"f": 0}, parent="gap-a", content=b"B")
        stackpoints.new_stackpoint(store, "gap", "gap-a")
        directory = stackpoints.mount_stackpoint(store, "gap")
    figures = {mode: count_gap(store, directory, env_for(mode)) for mode in ("", "legacy")}
    with store.locked(exclusive=True):
        stackpoints.umount_stackpoint(store, "gap", lazy=True)
    (failed, reads, refused), (b_failed, b_reads, b_refused) = figures[""], figures["legacy"]
    what = f"failed reads during {SWITCHES} cutovers + {SWITCHES} fallbacks"
    method = "gapless" if overlay.gapless_switch() else "unmount-then-mount (no MOVE_MOUNT_BENEATH)"
    return [common.row(what, failed, "unmount-then-mount", b_failed, "count", "0", failed == 0,
                       stacko_method=method, stacko_reads=reads, baseline_reads=b_reads,
                       stacko_failed_switches=refused, baseline_failed_switches=b_refused)]


def count_gap(store: Store, directory: str, env: Dict[str, str]) -> Tuple[int, int, int]:
    """(failed reads, reads, switches that failed) over SWITCHES round trips."""
    path = os.path.join(directory, "f")
    stop = threading.Event()
    counts = [0, 0]

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    ok = f.read() in (b"A", b"B")
            except OSError:
                ok = False
            counts[0 if ok else 1] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    refused = 0
    try:
        for _ in range(SWITCHES):
            refused += not cli(store, "cutover-stackpoint", "gap", "gap-b", env=env)
            refused += not cli(store, "fallback-stackpoint", "gap", env=env)
    finally:
        stop.set()
        thread.join()
    return counts[1], counts[0] + counts[1], refused


# --- cost vs data ----------------------------------------------------------------------
def size_rows(store: Store) -> List[Dict[str, object]]:
    with store.locked(exclusive=True):
        for tag, size in (("big", 512 * MIB), ("small", MIB)):
            image_with(store, f"{tag}-a", {"data": size})
            image_with(store, f"{tag}-b", {"more": 0}, parent=f"{tag}-a")
            stackpoints.new_stackpoint(store, tag, f"{tag}-a")
            directory = stackpoints.mount_stackpoint(store, tag)
            with open(os.path.join(directory, "written"), "wb") as f:   # copy-on-write data too
                f.write(b"\x5a" * min(size, 64 * MIB))
    os.sync()

    def case(point: str, label: str, env: Dict[str, str]) -> Callable[[], Dict[str, float]]:
        def one() -> Dict[str, float]:
            def switch() -> None:
                assert cli(store, "cutover-stackpoint", point, f"{point}-b", env=env)
                assert cli(store, "fallback-stackpoint", point, env=env)
            return {label: common.timed(switch)}
        return one

    samples = common.interleave({
        "big": case("big", "big", {}), "small": case("small", "small", {}),
        "legacy": case("small", "legacy", env_for("legacy")),
    }, common.repeats(ROUNDS), warmup=1)
    with store.locked(exclusive=True):
        for tag in ("big", "small"):
            stackpoints.umount_stackpoint(store, tag)
    big, small, legacy = (common.median_ms(samples[k]) for k in ("big", "small", "legacy"))
    return [
        common.row("cutover + fallback, 512 MiB stack", big, "the same, 1 MiB stack", small,
                   "ms", "ratio <= 1.1", big <= 1.1 * small, n=len(samples["big"]),
                   stacko_spread=round(common.spread_ms(samples["big"]), 2),
                   baseline_spread=round(common.spread_ms(samples["small"]), 2)),
        common.row("cutover + fallback, 1 MiB stack", small, "unmount-then-mount (legacy)",
                   legacy, "ms", "for reference", None, n=len(samples["small"])),
    ]


# --- podman ------------------------------------------------------------------------------
def layer_tar(index: int, files: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for j in range(files):
            data = (f"layer {index} file {j}\n".encode() * (size // 8 + 1))[:size]
            info = tarfile.TarInfo(f"l{index:04d}/f{j:04d}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_archive(target: Path, layers: int, files: int = 1, size: int = 64,
                 name: str = "bench") -> None:
    """An OCI archive (oci-archive tar) of layers uncompressed layers."""
    common.write_oci_archive(target, [layer_tar(i, files, size) for i in range(layers)], name)


class Podman:
    def __init__(self, argv: List[str], base: Path) -> None:
        self.argv, self.base = argv, base

    @classmethod
    def find(cls, base: Path) -> Optional["Podman"]:
        exe = shutil.which("podman")
        if exe is None:
            return None
        argv = [exe, "--root", str(base / "podman-storage"), "--runroot",
                str(base / "podman-run"), "--storage-driver", "overlay"]
        if subprocess.run(argv + ["images"], capture_output=True).returncode != 0:
            return None
        return cls(argv, base)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv + list(args), capture_output=True, text=True)

    def load(self, archive: Path, fresh: bool = True) -> bool:
        if fresh:
            self.run("rmi", "-a", "-f")
        return self.run("load", "-q", "-i", str(archive)).returncode == 0

    def clean(self) -> None:
        self.run("rmi", "-a", "-f")
        subprocess.run(["umount", "-R", "--lazy", str(self.base / "podman-storage" / "overlay")],
                       capture_output=True)


def podman_rows(store: Store, scratch: Path, podman: Optional[Podman]) -> List[Dict[str, object]]:
    archive = scratch / "three.tar"
    make_archive(archive, 3, files=100, size=4096)
    argv = common.stacko_argv() + ["--root", store.root]
    common.run(argv + ["import-image", "three", str(archive)])
    common.run(argv + ["new-stackpoint", "three", "three"])
    with store.locked(exclusive=False):
        chain = [i.layer for i in images.stack_of(store.load_images(), "three")]
    floor_dir = scratch / "floor"
    floor_dir.mkdir()
    params = overlay.new_api_parameters(store.layers_dir, chain) if mountapi.supports_new_api() \
        else None

    def stacko_case() -> Dict[str, float]:
        return {"stacko": common.timed(lambda: (common.run(argv + ["mount-stackpoint", "three"]),
                                                common.run(argv + ["umount-stackpoint", "three"])))}

    def floor_case() -> Dict[str, float]:
        def once() -> None:
            if params is not None:
                mountapi.mount_parameters(str(floor_dir), params)
            else:
                overlay.mount_overlay(str(floor_dir), store.layers_dir, chain + ["../e"])
            mountapi.umount2(str(floor_dir), 0)
        return {"floor": common.timed(once)}

    def podman_case() -> Dict[str, float]:
        assert podman is not None

        def once() -> None:
            assert podman.run("image", "mount", "bench").returncode == 0
            assert podman.run("image", "unmount", "bench").returncode == 0
        return {"podman": common.timed(once)}

    cases = {"stacko": stacko_case, "floor": floor_case}
    if podman is not None and podman.load(archive):
        cases["podman"] = podman_case
    samples = common.interleave(cases, common.repeats(MOUNT_ROUNDS))
    ours, floor = common.median_ms(samples["stacko"]), common.median_ms(samples["floor"])
    theirs = common.median_ms(samples["podman"]) if "podman" in samples else None
    return [
        common.row("mount + umount of a 3-layer image", ours,
                   "podman image mount + unmount", theirs, "ms", "stacko <= podman",
                   None if theirs is None else ours <= theirs, n=len(samples["stacko"]),
                   stacko_spread=round(common.spread_ms(samples["stacko"]), 2)),
        common.row("mount + umount of a 3-layer image", ours, "bare kernel (syscalls, in-process)",
                   floor, "ms", "for reference", None),
    ]


# --- depth -------------------------------------------------------------------------------
def depth_rows(store: Store, scratch: Path, podman: Optional[Podman]) -> List[Dict[str, object]]:
    # A 501st layer is refused already by new-image (StackTooDeep), so 500 is the top.
    chain = common.build_stack(store, overlay.MAX_LAYERS, "deep")
    with common.mount_table_snapshot():
        stackpoints.new_stackpoint(store, "deep", chain[-1])
    deepest = 0
    if cli(store, "mount-stackpoint", "deep"):
        deepest = overlay.MAX_LAYERS
        cli(store, "umount-stackpoint", "deep")
    theirs = podman_deepest(scratch, podman) if podman is not None else None
    return [common.row("deepest stack that mounts", deepest, "podman (overlay driver)", theirs,
                       "layers", "stacko >= podman, 500 (the kernel's limit)",
                       deepest == overlay.MAX_LAYERS and (theirs is None or deepest >= theirs))]


def podman_deepest(scratch: Path, podman: Podman) -> Optional[int]:
    """Bisect the number of layers for which podman loads and mounts an image."""
    podman.run("rmi", "-a", "-f")
    def works(layers: int) -> bool:
        archive = scratch / f"deep-{layers}.tar"
        make_archive(archive, layers)
        try:
            # Not fresh: the archives share their first layers, which podman keeps,
            # so each attempt only adds the layers the last one did not have.
            if not podman.load(archive, fresh=False):
                return False
            ok = podman.run("image", "mount", "bench").returncode == 0
            podman.run("image", "unmount", "bench")
            return ok
        finally:
            archive.unlink()

    low, high = 1, overlay.MAX_LAYERS + 1        # works(low) is assumed; high is excluded
    if not works(low):
        return None
    if works(overlay.MAX_LAYERS):
        return overlay.MAX_LAYERS
    high = overlay.MAX_LAYERS
    while high - low > 1:
        middle = (low + high) // 2
        if works(middle):
            low = middle
        else:
            high = middle
    return low


if __name__ == "__main__":
    started = time.monotonic()
    for line in run():
        print(json.dumps(line))
    print(f"{time.monotonic() - started:.0f} s")
