"""mount-stackpoint + umount-stackpoint beside plain mount(8) of the same layers.

The floor is what stacko cannot avoid: `mount -t overlay` with the very
option string stacko builds, run the way stacko runs it (from inside
<root>/l with the layers' short relative names, LIBMOUNT_FORCE_MOUNT2=always),
then `umount`.  What stacko adds on top is the interpreter's start, its
imports, reading the metadata and the mount table, and the lock.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List

import common
from stacko import images, mounttable, stackpoints
from stacko.state import Store

TITLE = "mount-stackpoint / umount-stackpoint vs plain mount + umount (the floor)"
DEPTHS = (1, 100, 500)
BUDGET_MS = 30.0      # the goal: at most this much over the floor, per command
ROUNDS = 40           # each round runs every case once, in random order
PARAMETERS = "/sys/module/overlay/parameters"


def run() -> List[Dict[str, object]]:
    common.require_root("bench_mount")
    with common.scratch_root("mount") as scratch:
        store = Store(os.path.join(scratch, "root"))
        chain = common.build_stack(store, max(DEPTHS), "img")
        cases: Dict[str, Callable[[], Dict[str, float]]] = {}
        with common.mount_table_snapshot():
            for depth in DEPTHS:
                stackpoints.new_stackpoint(store, f"p{depth}", chain[depth - 1])
        for depth in DEPTHS:
            cases[f"stacko {depth}"] = stacko_case(store, f"p{depth}", depth)
            cases[f"floor {depth}"] = floor_case(store, scratch, chain[depth - 1], depth)
        for case in cases.values():   # once untimed: fails loudly if a mount is wrong
            case()
        check_depth(store, "p500", 500)
        samples = common.interleave(cases, common.repeats(ROUNDS))
    rows = []
    for depth in DEPTHS:
        for verb in ("mount", "umount"):
            mine = samples[f"stacko {verb} {depth}"]
            floor = samples[f"floor {verb} {depth}"]
            ms, floor_ms = common.median_ms(mine), common.median_ms(floor)
            rows.append(common.row(
                f"{verb}-stackpoint, depth {depth}", ms, f"{verb} -t overlay" if verb == "mount"
                else "umount", floor_ms, "ms", f"<= floor + {BUDGET_MS:g} ms",
                ms - floor_ms <= BUDGET_MS, n=len(mine), stacko_spread=round(common.spread_ms(mine), 2),
                baseline_spread=round(common.spread_ms(floor), 2)))
    return rows


def stacko_case(store: Store, point: str, depth: int) -> Callable[[], Dict[str, float]]:
    base = common.stacko_argv() + ["--root", store.root]
    mount, umount = base + ["mount-stackpoint", point], base + ["umount-stackpoint", point]

    def case() -> Dict[str, float]:
        return {f"stacko mount {depth}": common.timed(lambda: common.run(mount)),
                f"stacko umount {depth}": common.timed(lambda: common.run(umount))}
    return case


def floor_case(store: Store, scratch: str, image: str, depth: int
               ) -> Callable[[], Dict[str, float]]:
    """Plain mount(8) of image's stack over an upper layer of the bench's own.

    The option string is written out here rather than taken from stacko, so
    that the floor stays what the issue names whatever stacko's mount path
    becomes: the layers' short names relative to <root>/l, which keep 500
    layers inside the one page of classic mount data.
    """
    lowers = [i.layer for i in images.stack_of(store.load_images(), image)]
    upper = store.new_layer()          # unrecorded: the floor's own instance layer
    work = os.path.relpath(store.work_path(upper), store.layers_dir)
    options = ",".join([f"lowerdir={':'.join(lowers)}", f"upperdir={upper}", f"workdir={work}"]
                       + portable_options())
    target = os.path.join(scratch, f"floor{depth}")
    os.mkdir(target)
    mount = ["mount", "-t", "overlay", "stacko", "-o", options, target]
    umount = ["umount", target]
    env = {"LIBMOUNT_FORCE_MOUNT2": "always"}

    def case() -> Dict[str, float]:
        return {f"floor mount {depth}": common.timed(
                    lambda: common.run(mount, cwd=store.layers_dir, env=env)),
                f"floor umount {depth}": common.timed(lambda: common.run(umount))}
    return case


def portable_options() -> List[str]:
    """index=off etc. for the features this kernel knows, as stacko passes them."""
    known = set(os.listdir(PARAMETERS)) if os.path.isdir(PARAMETERS) else set()
    return [f"{o}=off" for o in ("index", "metacopy", "redirect_dir") if o in known]


def check_depth(store: Store, point: str, depth: int) -> None:
    """The deepest stackpoint really mounts (with the new mount API the
    lowerdirs shown in mountinfo are absolute, so their count is not checked)."""
    common.run(common.stacko_argv() + ["--root", store.root, "mount-stackpoint", point])
    try:
        directory = os.path.join(store.root, "stackpoints", point)
        m = mounttable.find_mount(directory)
        if m is None or m.fstype != "overlay":
            raise RuntimeError(f"{point} did not mount an overlay at {directory}")
    finally:
        common.run(common.stacko_argv() + ["--root", store.root, "umount-stackpoint", point])
