"""commit-stackpoint of a 1 GiB instance beside a 10 KiB one.

commit-stackpoint hands the instance's layer directory to the new image
without copying (or even renaming) it, so its cost must not grow with the
amount of data: the goal is a 1 GiB commit within 10 % of a 10 KiB one.  What
it does pay is per file (one listxattr to strip the kernel's private
attributes), which the last row shows with 10,000 small files, for reference.

Each case commits a mounted stackpoint with the real CLI (unmount, strip,
two metadata writes, mount); the data is written through the mount and
synced to disk beforehand, untimed, and the committed image is deleted
afterwards so that the disk does not fill up.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List

import common
from stacko import images, stackpoints
from stacko.state import Store

TITLE = "commit-stackpoint: 1 GiB instance vs 10 KiB (moves the layer, copies nothing)"
ROUNDS = 5
CHUNK = b"\x5a" * (1 << 20)


def run() -> List[Dict[str, object]]:
    common.require_root("bench_commit")
    with common.scratch_root("commit") as scratch:
        store = Store(os.path.join(scratch, "root"))
        images.new_image(store, "base")
        cases: Dict[str, Callable[[], Dict[str, float]]] = {
            "1 GiB": case(store, "big", lambda d: write_big(d, 1024)),
            "10 KiB": case(store, "small", lambda d: write_small(d, 10, 1024)),
            "10000 files": case(store, "many", lambda d: write_small(d, 10000, 16)),
        }
        samples = common.interleave(cases, common.repeats(ROUNDS), warmup=1)
    big, small, many = samples["1 GiB"], samples["10 KiB"], samples["10000 files"]
    big_ms, small_ms, many_ms = (common.median_ms(s) for s in (big, small, many))
    return [
        common.row("commit 1 GiB instance", big_ms / 1000, "commit 10 KiB instance",
                   small_ms / 1000, "s", "ratio <= 1.1", big_ms <= 1.1 * small_ms,
                   n=len(big), stacko_spread_ms=round(common.spread_ms(big), 2),
                   baseline_spread_ms=round(common.spread_ms(small), 2)),
        common.row("commit 10,000-file instance (160 KiB)", many_ms / 1000,
                   "commit 10 KiB instance", small_ms / 1000, "s",
                   "for reference: the cost is per file, not per byte", None,
                   n=len(many), stacko_spread_ms=round(common.spread_ms(many), 2)),
    ]


def case(store: Store, point: str, fill: Callable[[str], None]) -> Callable[[], Dict[str, float]]:
    """One round: a fresh mounted stackpoint filled by fill, then the timed commit."""
    argv = common.stacko_argv() + ["--root", store.root, "commit-stackpoint", point]
    label = {"big": "1 GiB", "small": "10 KiB", "many": "10000 files"}[point]
    count = [0]

    def one() -> Dict[str, float]:
        count[0] += 1
        snap = f"{point}-{count[0]}"
        stackpoints.new_stackpoint(store, point, "base")
        directory = stackpoints.mount_stackpoint(store, point)
        fill(directory)
        os.sync()                   # the commit must not pay for the writeback
        seconds = common.timed(lambda: common.run(argv + [snap]))
        stackpoints.umount_stackpoint(store, point)
        stackpoints.delete_stackpoint(store, point)
        images.delete_image(store, snap)
        return {label: seconds}
    return one


def write_big(directory: str, mib: int) -> None:
    with open(os.path.join(directory, "big.img"), "wb") as f:
        for _ in range(mib):
            f.write(CHUNK)


def write_small(directory: str, count: int, size: int) -> None:
    os.makedirs(os.path.join(directory, "files"), exist_ok=True)
    data = CHUNK[:size]
    for i in range(count):
        with open(os.path.join(directory, "files", f"f{i:05d}"), "wb") as f:
            f.write(data)
