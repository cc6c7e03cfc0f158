"""Benchmark: an update-stackpoint that finds nothing new.

A stackpoint follows a tag of a local registry (Debian's docker-registry on
127.0.0.1, plain HTTP) and already runs its image.  Rows, each the median of
ROUNDS runs, interleaved:

* `update-stackpoint p REF` (up to date: one GET of the manifest, one durable
  write of the check) beside the goal: 2x `get-stackpoint-dir`'s whole run
  plus one registry round trip (a GET of the same manifest with urllib, in a
  process that is already running).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

import common

TITLE = "update: an update-stackpoint that finds nothing new"
ROUNDS = 15
TESTS = os.path.join(common.REPO, "tests")


def run() -> List[dict]:
    common.require_root("bench_update")
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
