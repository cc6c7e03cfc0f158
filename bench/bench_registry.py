"""Benchmark: pull-image and push-image beside `podman pull` and `podman push`.

One registry (Debian's docker-registry, on 127.0.0.1) holds a medium image
(3 gzip layers, about 3000 files, about 40 MB, made as in bench_oci).  Its
storage, every stacko state root and every podman storage root live on one
fresh loop-mounted ext4 (in /dev/shm when it has room), so both sides write to
the same kind of fresh filesystem.  Rows, each the median of ROUNDS runs, the
two sides alternating in a random order:

* pull: a fresh state root / podman storage pulls the image;
* pull of an update (only the top layer changed) into a store that has v1;
* push again: the pulled image to a new repository of the registry it came
  from, which holds every blob (stacko mounts them, packing nothing);
* push: the image, from a store that has it, to a fresh, empty registry (so
  that every blob is uploaded: no blob is known or mountable there).

stacko's pull ends with syncfs(2) before it records the image (a command that
exits 0 has made durable what it recorded); podman's does not sync.  So the
pull rows are also given beside podman followed by `sync -f` of the same
filesystem: the same promise on both sides.

Without podman (or docker-registry) the module says so and gives no row for
the side that is missing.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import common

TITLE = "registry: pull-image and push-image vs podman pull/push (medium image, ~40 MB)"
ROUNDS = 5
TESTS = os.path.join(common.REPO, "tests")


def registry_module():
    sys.path.insert(0, TESTS)
    import registryd
    return registryd


def make_layouts(base: Path) -> Dict[str, Path]:
    """Two oci-archives: v1, and v2 with another top layer."""
    import bench_oci
    tars = [bench_oci._layer(seed, files, 13_000) for seed, files in ((1, 2000), (2, 800),
                                                                       (3, 200))]
    found = {}
    for version, top_seed in (("v1", 3), ("v2", 4)):
        layers = tars[:2] + [bench_oci._layer(top_seed, 200, 13_000)]
        target = base / f"{version}.tar"
        common.write_oci_archive(target, layers, version,
                                 compress=lambda t: gzip.compress(t, compresslevel=6, mtime=0),
                                 media_type="application/vnd.oci.image.layer.v1.tar+gzip")
        found[version] = target
    return found


def stacko(root: str, *args: str) -> None:
    common.run(common.stacko_argv() + ["--root", root, *args])


RUNROOTS: List[str] = []


def podman_base(store: Path) -> List[str]:
    # podman refuses a run root longer than 50 characters; it holds no image data.
    run = tempfile.mkdtemp(prefix="sbr-", dir="/tmp")
    RUNROOTS.append(run)
    return ["podman", "--root", str(store / "storage"), "--runroot", run,
            "--storage-driver", "overlay"]


def run() -> List[dict]:
    common.require_root("bench_registry")
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        raise RuntimeError("docker-registry and skopeo are needed (tests/install-deps.sh)")
    try:
        with common.loop_ext4("registry") as fs:
            return measure(Path(fs))
    finally:
        for run_root in RUNROOTS:
            subprocess.run(["umount", "-R", "-l", run_root], capture_output=True)
            shutil.rmtree(run_root, ignore_errors=True)


def measure(fs: Path) -> List[dict]:
    registryd = registry_module()
    have_podman = shutil.which("podman") is not None
    if not have_podman:
        print("podman is not installed: only stacko's side is measured", flush=True)
    archives = make_layouts(fs)
    source = registryd.Registry(fs / "registry").start()
    started = [source]
    try:
        for version, archive in archives.items():
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                            f"oci-archive:{archive}", f"docker://{source.host}/app:{version}"],
                           check=True, capture_output=True)
        counter = iter(range(10_000))

        def fresh(kind: str) -> Path:
            path = fs / f"{kind}-{next(counter)}"
            path.mkdir()
            return path

        def pull_stacko() -> Dict[str, float]:
            root = str(fresh("stacko"))
            return {"stacko pull": common.timed(lambda: stacko(
                root, "pull-image", "app", f"{source.host}/app:v1", "--tls-verify=false"))}

        def pull_podman() -> Dict[str, float]:
            base = podman_base(fresh("podman"))
            pulled = common.timed(lambda: common.run(
                base + ["pull", "-q", "--tls-verify=false", f"{source.host}/app:v1"]))
            synced = common.timed(lambda: common.run(["sync", "-f", str(fs)]))
            return {"podman pull": pulled, "podman pull+sync": pulled + synced}

        def update_stacko() -> Dict[str, float]:
            root = str(fresh("stacko"))
            stacko(root, "pull-image", "app1", f"{source.host}/app:v1", "--tls-verify=false")
            return {"stacko update": common.timed(lambda: stacko(
                root, "pull-image", "app2", f"{source.host}/app:v2", "--tls-verify=false"))}

        def update_podman() -> Dict[str, float]:
            base = podman_base(fresh("podman"))
            common.run(base + ["pull", "-q", "--tls-verify=false", f"{source.host}/app:v1"])
            common.run(["sync", "-f", str(fs)])
            pulled = common.timed(lambda: common.run(
                base + ["pull", "-q", "--tls-verify=false", f"{source.host}/app:v2"]))
            synced = common.timed(lambda: common.run(["sync", "-f", str(fs)]))
            return {"podman update": pulled, "podman update+sync": pulled + synced}

        stacko_root = str(fresh("stacko"))
        stacko(stacko_root, "pull-image", "app", f"{source.host}/app:v1", "--tls-verify=false")
        podman_store = podman_base(fresh("podman"))
        if have_podman:
            common.run(podman_store + ["pull", "-q", "--tls-verify=false",
                                       f"{source.host}/app:v1"])

        def empty_registry() -> "registryd.Registry":
            target = registryd.Registry(fresh("registry")).start()
            started.append(target)
            return target

        def push_stacko() -> Dict[str, float]:
            target = empty_registry()
            seconds = common.timed(lambda: stacko(
                stacko_root, "push-image", "app", f"{target.host}/app:v1", "--tls-verify=false"))
            target.stop()
            return {"stacko push": seconds}

        def push_podman() -> Dict[str, float]:
            target = empty_registry()
            seconds = common.timed(lambda: common.run(
                podman_store + ["push", "-q", "--tls-verify=false", f"{source.host}/app:v1",
                                f"docker://{target.host}/app:v1"]))
            target.stop()
            return {"podman push": seconds}

        def again_stacko() -> Dict[str, float]:
            repo = f"{source.host}/copy-{next(counter)}/app:v1"
            return {"stacko push again": common.timed(lambda: stacko(
                stacko_root, "push-image", "app", repo, "--tls-verify=false"))}

        def again_podman() -> Dict[str, float]:
            repo = f"{source.host}/copy-{next(counter)}/app:v1"
            return {"podman push again": common.timed(lambda: common.run(
                podman_store + ["push", "-q", "--tls-verify=false", f"{source.host}/app:v1",
                                f"docker://{repo}"]))}

        cases = {"stacko pull": pull_stacko, "stacko update": update_stacko,
                 "stacko push": push_stacko, "stacko push again": again_stacko}
        if have_podman:
            cases.update({"podman pull": pull_podman, "podman update": update_podman,
                          "podman push": push_podman, "podman push again": again_podman})
        samples = common.interleave(cases, common.repeats(ROUNDS), warmup=1)
    finally:
        for r in started:
            r.stop()
    rows = []
    # Issue 21's goals: a fresh pull <= 0.9x podman's, an update <= 0.8x, a first push
    # <= 0.9x, a push of blobs the registry holds <= 1.0x.
    for what, label, baseline, factor in (
            ("pull (fresh store)", "pull", "pull", 0.9),
            ("pull, beside podman + syncfs", "pull", "pull+sync", 0.9),
            ("pull an update (top layer changed)", "update", "update", 0.8),
            ("pull an update, beside podman + syncfs", "update", "update+sync", 0.8),
            ("push (empty registry)", "push", "push", 0.9),
            ("push to a new repository of a registry that holds the blobs", "push again",
             "push again", 1.0)):
        ours = common.median_ms(samples[f"stacko {label}"]) / 1000
        theirs = common.median_ms(samples[f"podman {baseline}"]) / 1000 \
            if f"podman {baseline}" in samples else None
        rows.append(common.row(what, ours, "podman" if theirs is not None else None, theirs,
                               "s", f"<= {factor:.1f}x podman",
                               None if theirs is None else ours <= factor * theirs))
    return rows
