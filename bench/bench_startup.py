"""A command's whole run beside the interpreter's own start (`python -c pass`).

Boot scripts and shells run stacko many times a minute, and its own work takes
a millisecond or two: what they wait for is Python starting and stacko's
imports.  Each command runs as a user runs it, the installed console script as
a new process, interleaved with `python -c pass` of the same interpreter.
Goal: at most 2.5 times `python -c pass`.  The last rows are the import
budget (python -X importtime) of the listing and the mount path, as recorded
in docs/startup.md.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
from collections.abc import Callable

import common
from stacko import stackpoints
from stacko.state import Store

TITLE = "a command's whole run vs the interpreter's start (python -c pass)"
ROUNDS = 40
GOAL_RATIO = 2.5
IMPORT_RUNS = 7


def run() -> list[dict[str, object]]:
    with common.scratch_root("startup") as scratch:
        store = Store(os.path.join(scratch, "root"))
        common.build_stack(store, 3, "img")
        with common.mount_table_snapshot():
            stackpoints.new_stackpoint(store, "web", "img-0003")
        stacko = common.stacko_argv() + ["--root", store.root]
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    "get-stackpoint-dir": stacko + ["get-stackpoint-dir", "web"],
                    "list-stackpoints": stacko + ["list-stackpoints"],
                    "list-images": stacko + ["list-images"],
                    "--version": common.stacko_argv() + ["--version"]}   # as users run it
        # is-stackpoint-mounted exits 1 when not mounted: run it with check off.
        commands_rc1 = {"is-stackpoint-mounted": stacko + ["is-stackpoint-mounted", "web"]}
        cases = {key: (lambda key=key, argv=argv: timed(key, lambda: common.run(argv)))
                 for key, argv in commands.items()}
        cases.update({key: (lambda key=key, argv=argv: timed(key, lambda: common.run_status(argv)))
                      for key, argv in commands_rc1.items()})
        samples = common.interleave(cases, common.repeats(ROUNDS))
        budget = {what: import_ms(argv) for what, argv in (
            ("get-stackpoint-dir", stacko + ["get-stackpoint-dir", "web"]),
            ("list-images", stacko + ["list-images"]))}
    ms = {key: common.median_ms(v) for key, v in samples.items()}
    start, cpu_start = ms.pop("python -c pass"), ms.pop("python -c pass CPU")
    rows = []
    for what, value in ms.items():
        if what.endswith(" CPU"):
            continue
        rows.append(common.row(
            f"stacko {what}", value, "python -c pass", start, "ms",
            f"<= {GOAL_RATIO:g}x the interpreter", value <= GOAL_RATIO * start,
            n=len(samples[what]), stacko_spread=round(common.spread_ms(samples[what]), 2),
            baseline_spread=round(common.spread_ms(samples["python -c pass"]), 2)))
    # CPU time says the same with less noise on a machine shared with other work.
    for what, value in ms.items():
        if what.endswith(" CPU"):
            rows.append(common.row(f"stacko {what} time", value, "python -c pass CPU time",
                                   cpu_start, "ms", f"<= {GOAL_RATIO:g}x the interpreter",
                                   value <= GOAL_RATIO * cpu_start))
    for what, (total, stacko_own) in budget.items():
        rows.append(common.row(f"imports of {what} beyond python -c pass", total, None, None,
                               "ms", "-", None))
        rows.append(common.row("  of which stacko's own modules", stacko_own, None, None,
                               "ms", "-", None))
    return rows


def timed(key: str, func: Callable[[], object]) -> dict[str, float]:
    """Wall-clock seconds of one call, and the CPU seconds (user + system) of the
    child process it ran, as two samples: KEY and "KEY CPU"."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = common.timed(func)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {key: wall, f"{key} CPU": cpu}


def import_ms(argv: list[str]) -> tuple[float, float]:
    """Median over runs of the self time (ms) of every module argv imports that
    `python -c pass` does not, and of stacko's own modules among them."""
    script = argv if argv[0] != sys.executable else argv[1:]
    baseline = set(common.import_times(["-c", "pass"]))
    totals, own = [], []
    for _ in range(IMPORT_RUNS):
        times = common.import_times(script)
        extra = {m: t for m, t in times.items() if m not in baseline}
        totals.append(sum(extra.values()))
        own.append(sum(t for m, t in extra.items() if m == "stacko" or m.startswith("stacko.")))
    return statistics.median(totals), statistics.median(own)
