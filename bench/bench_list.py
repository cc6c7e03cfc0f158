"""list-images with 1,000 images beside the interpreter's own start.

A listing is what a boot script or a shell prompt runs often, so stacko's own
start-up matters more than its work: the goal is under twice `python -c pass`
of the same interpreter.  The import rows say where the start-up goes: the
modules stacko imports that a bare `python -c pass` does not, slowest first.
"""
from __future__ import annotations

import os
import statistics
import sys
from typing import Callable, Dict, List, Tuple

import common
from stacko import images, stackpoints
from stacko.state import Store

TITLE = "list-images with 1,000 images vs the interpreter's start (python -c pass)"
IMAGES = 1000
POINTS = 10           # stackpoints with an instance each, as a real host has a few
ROUNDS = 40
GOAL_RATIO = 2.0
IMPORT_RUNS = 7       # -X importtime runs whose medians make the import rows
IMPORT_ROWS = 8


def run() -> List[Dict[str, object]]:
    with common.scratch_root("list") as scratch:
        store = Store(os.path.join(scratch, "root"))
        names = common.build_forest(store, IMAGES, "img")
        with common.mount_table_snapshot():
            for n in range(POINTS):
                stackpoints.new_stackpoint(store, f"p{n}", names[-1 - n * 37])
        stacko = common.stacko_argv() + ["--root", store.root]
        listed = common.run(stacko + ["list-images"]).stdout.decode().split()
        if len(listed) != IMAGES:
            raise RuntimeError(f"list-images printed {len(listed)} names, not {IMAGES}")
        commands = {"pass": [sys.executable, "-c", "pass"],
                    "list": stacko + ["list-images"],
                    "json": stacko + ["list-images", "--json"],
                    "tree": stacko + ["list-images", "--tree"],
                    "version": common.stacko_argv() + ["--version"]}   # as users run it
        cases: Dict[str, Callable[[], Dict[str, float]]] = {
            key: (lambda key=key, argv=argv: {key: common.timed(lambda: common.run(argv))})
            for key, argv in commands.items()}
        samples = common.interleave(cases, common.repeats(ROUNDS))
        in_process = [common.timed(lambda: images.list_images(store))
                      for _ in range(common.repeats(15))]
        imports = import_costs(stacko + ["list-images"])

    ms = {key: common.median_ms(v) for key, v in samples.items()}
    start = ms["pass"]
    base = "python -c pass"
    rows = [common.row(f"list-images, {IMAGES} images", ms["list"], base, start, "ms",
                       f"< {GOAL_RATIO:g}x the interpreter", ms["list"] < GOAL_RATIO * start,
                       n=len(samples["list"]), stacko_spread=round(common.spread_ms(samples["list"]), 2),
                       baseline_spread=round(common.spread_ms(samples["pass"]), 2)),
            common.row("list-images --json", ms["json"], base, start, "ms", "-", None),
            common.row("list-images --tree", ms["tree"], base, start, "ms", "-", None),
            common.row("stacko --version (start-up only)", ms["version"], base, start, "ms",
                       "-", None),
            common.row("list_images() in-process (no start-up)",
                       common.median_ms(in_process), None, None, "ms", "-", None)]
    total = sum(cost for _, cost in imports)
    rows.append(common.row("imports python -c pass does not make", total, None, None, "ms",
                           "-", None))
    for module, cost in imports[:IMPORT_ROWS]:
        rows.append(common.row(f"  import {module} (self)", cost, None, None, "ms", "-", None))
    return rows


def import_costs(argv: List[str]) -> List[Tuple[str, float]]:
    """Median self time (ms) of each module argv imports beyond `python -c pass`, slowest first."""
    def profile(command: List[str]) -> Dict[str, float]:
        proc = common.run([sys.executable, "-X", "importtime"] + command)
        costs: Dict[str, float] = {}
        for line in proc.stderr.decode("utf-8", "replace").splitlines():
            if line.startswith("import time:") and "|" in line:
                self_us, _, name = line[len("import time:"):].split("|")
                if self_us.strip().isdigit():
                    costs[name.strip()] = int(self_us) / 1000.0
        return costs

    # argv[0] may be the console script: run it with the same interpreter.
    script = argv if argv[0] != sys.executable else argv[1:]
    baseline = set(profile(["-c", "pass"]))
    runs = [profile(script) for _ in range(IMPORT_RUNS)]
    modules = {m for r in runs for m in r} - baseline
    medians = {m: statistics.median(r.get(m, 0.0) for r in runs) for m in modules}
    return sorted(medians.items(), key=lambda item: -item[1])
