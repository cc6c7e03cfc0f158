"""Benchmark: an update-stackpoint that finds nothing new.

A stackpoint follows a tag of a local registry (Debian's docker-registry on
127.0.0.1, plain HTTP) and already runs its image.  Rows, each the median of
ROUNDS runs, interleaved:

* `update-stackpoint p REF` (up to date: one GET of the manifest, one durable
  write of the check) beside the goal: 2x `get-stackpoint-dir`'s whole run
  plus one registry round trip (a GET of the same manifest with urllib, in a
  process that is already running).
* `update-stackpoint p REF` when REF moved from the medium image (3 gzip
  layers, ~40 MB, as in bench_registry) to its update whose top layer alone
  changed: the pull of that layer and the checked-free cutover, beside the
  goal: `podman pull` of the same update into a store that has the first
  version, plus stacko's own cutover (`cutover-stackpoint` to the pulled
  image, in a root that has both).  The registry, the stacko roots and the
  podman stores share one fresh loop-mounted ext4.  Each round follows a
  repository of its own, whose tag is moved between the untimed set-up and
  the timed update.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Dict, List

import common

TITLE = "update: update-stackpoint finding nothing new, and finding a new top layer"
ROUNDS = 15
TESTS = os.path.join(common.REPO, "tests")


def run() -> List[dict]:
    common.require_root("bench_update")
    return up_to_date() + changed_top()


def up_to_date() -> List[dict]:
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        raise RuntimeError("docker-registry and skopeo are needed (tests/install-deps.sh)")
    sys.path.insert(0, TESTS)
    import registryd
    from ocigen import d, f, write_layout
    with tempfile.TemporaryDirectory(prefix="stacko-bench-update-") as scratch:
        base = Path(scratch)
        registry = registryd.Registry(base / "registry").start()
        try:
            layout = base / "layout"
            write_layout(layout, [[d("srv"), f("srv/version", b"v1")]], ref="v1")
            registryd.skopeo_push(registry, f"oci:{layout}:v1", "fleet/web:stable")
            ref = f"{registry.host}/fleet/web:stable"
            stacko = common.stacko_argv() + ["--root", str(base / "root")]
            common.run(stacko + ["new-image", "seed"])
            common.run(stacko + ["new-stackpoint", "p", "seed"])
            common.run(stacko + ["update-stackpoint", "p", ref, "--tls-verify=false"])
            url = f"http://{registry.host}/v2/fleet/web/manifests/stable"
            accept = "application/vnd.oci.image.manifest.v1+json"

            def round_trip() -> None:
                request = urllib.request.Request(url, headers={"Accept": accept})
                urllib.request.urlopen(request, timeout=10).read()

            cases = {
                "update": lambda: {"update": common.timed(lambda: common.run(
                    stacko + ["update-stackpoint", "p", ref, "--tls-verify=false"]))},
                "dir": lambda: {"dir": common.timed(lambda: common.run(
                    stacko + ["get-stackpoint-dir", "p"]))},
                "rtt": lambda: {"rtt": common.timed(round_trip)},
            }
            samples = common.interleave(cases, common.repeats(ROUNDS))
        finally:
            registry.stop()
            common.unmount_under(scratch)
    update = common.median_ms(samples["update"])
    goal = 2 * common.median_ms(samples["dir"]) + common.median_ms(samples["rtt"])
    return [common.row("update-stackpoint, up to date", update,
                       "2x get-stackpoint-dir + 1 round trip", goal, "ms",
                       "<= 2x get-stackpoint-dir + 1 round trip", update <= goal)]


def changed_top() -> List[dict]:
    import bench_registry
    if shutil.which("podman") is None:
        print("podman is not installed: the update beside podman pull is not measured",
              flush=True)
        return []
    registryd = bench_registry.registry_module()
    where = os.environ.get("BENCH_LOOP_DIR")
    if where is None and os.path.isdir("/dev/shm"):
        shm = os.statvfs("/dev/shm")
        where = "/dev/shm" if shm.f_bavail * shm.f_frsize > 4 << 30 else None
    with tempfile.TemporaryDirectory(prefix="stacko-bench-update-", dir=where) as scratch:
        image = os.path.join(scratch, "fs.img")
        with open(image, "wb") as f:
            f.truncate(3 << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        fs = Path(scratch) / "fs"
        fs.mkdir()
        subprocess.run(["mount", "-o", "loop", image, str(fs)], check=True)
        registry = None
        try:
            archives = bench_registry.make_layouts(fs)
            registry = registryd.Registry(fs / "registry").start()
            host = registry.host
            for version, archive in archives.items():
                subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                f"oci-archive:{archive}", f"docker://{host}/app:{version}"],
                               check=True, capture_output=True)
            counter = iter(range(10_000))

            def fresh(kind: str) -> Path:
                path = fs / f"{kind}-{next(counter)}"
                path.mkdir()
                return path

            def tag(version: str, repo: str) -> None:
                subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                "--dest-tls-verify=false", f"docker://{host}/app:{version}",
                                f"docker://{host}/{repo}:stable"], check=True,
                               capture_output=True)

            def update_stacko() -> Dict[str, float]:
                repo = f"follow-{next(counter)}/app"
                tag("v1", repo)
                stacko = common.stacko_argv() + ["--root", str(fresh("stacko"))]
                common.run(stacko + ["new-image", "seed"])
                common.run(stacko + ["new-stackpoint", "p", "seed"])
                follow = stacko + ["update-stackpoint", "p", f"{host}/{repo}:stable",
                                   "--tls-verify=false"]
                common.run(follow)
                tag("v2", repo)
                return {"update": common.timed(lambda: common.run(follow))}

            def pull_podman() -> Dict[str, float]:
                repo = f"follow-{next(counter)}/app"
                tag("v1", repo)
                base = bench_registry.podman_base(fresh("podman"))
                pull = base + ["pull", "-q", "--tls-verify=false", f"{host}/{repo}:stable"]
                common.run(pull)
                tag("v2", repo)
                return {"podman": common.timed(lambda: common.run(pull))}

            def cutover_stacko() -> Dict[str, float]:
                root = str(fresh("stacko"))
                stacko = common.stacko_argv() + ["--root", root]
                for version in ("v1", "v2"):
                    common.run(stacko + ["pull-image", version, f"{host}/app:{version}",
                                         "--tls-verify=false"])
                common.run(stacko + ["new-stackpoint", "p", "v1"])
                common.run(stacko + ["mount-stackpoint", "p"])
                return {"cutover": common.timed(lambda: common.run(
                    stacko + ["cutover-stackpoint", "p", "v2"]))}

            samples = common.interleave({"update": update_stacko, "podman": pull_podman,
                                         "cutover": cutover_stacko},
                                        common.repeats(5), warmup=1)
        finally:
            if registry is not None:
                registry.stop()
            common.unmount_under(scratch)
            subprocess.run(["umount", "-R", "-l", str(fs)], capture_output=True)
            for run_root in bench_registry.RUNROOTS:
                subprocess.run(["umount", "-R", "-l", run_root], capture_output=True)
                shutil.rmtree(run_root, ignore_errors=True)
    update = common.median_ms(samples["update"]) / 1000
    goal = (common.median_ms(samples["podman"]) + common.median_ms(samples["cutover"])) / 1000
    return [common.row("update-stackpoint, top layer changed (~40 MB image)", update,
                       "podman pull + stacko cutover", goal, "s",
                       "<= 1.0x podman pull + cutover", update <= goal),
            common.row("cutover-stackpoint alone (the goal's second part)",
                       common.median_ms(samples["cutover"]) / 1000, None, None, "s", "-", None)]
