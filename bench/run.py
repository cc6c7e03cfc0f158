#!/usr/bin/env python3
"""The benchmark harness behind `make bench`.

Runs every bench/bench_*.py module (or the ones named on the command line:
`bench/run.py mount list`), prints one table per module and writes every
figure, with the machine it was measured on, to bench/results/latest.json.

A module exposes ``TITLE: str`` and ``run() -> list[dict]``; each dict is one
row: what, stacko, baseline_name, baseline, unit, goal, met (see common.row).
A module that fails prints its error and the others still run: the exit
status is 0 unless the harness itself breaks (or a name matches no module: 2).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

BENCH = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH, "results", "latest.json")
sys.path.insert(0, BENCH)        # the modules `import common`

import common  # noqa: E402


def discover() -> Dict[str, str]:
    """{short name: file} for every bench_*.py, sorted by name."""
    found = {}
    for entry in sorted(os.listdir(BENCH)):
        if entry.startswith("bench_") and entry.endswith(".py"):
            found[entry[len("bench_"):-len(".py")]] = os.path.join(BENCH, entry)
    return found


def load(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 \
            else f"{value:.2f}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def cells(row: Dict[str, Any]) -> List[str]:
    unit = str(row.get("unit", ""))
    stacko, base = row.get("stacko"), row.get("baseline")
    numbers = isinstance(stacko, (int, float)) and isinstance(base, (int, float))
    # A row may give its own ratio (the median of paired runs' ratios): else stacko / baseline.
    ratio = f"{row['ratio']:.2f}x" if isinstance(row.get("ratio"), (int, float)) else \
        f"{stacko / base:.2f}x" if numbers and base else "-"
    over = fmt(float(stacko - base), unit) if numbers else "-"
    if numbers and stacko >= base:
        over = "+" + over
    met = {True: "yes", False: "NO", None: "-"}[row.get("met")]
    return [str(row.get("what", "?")), fmt(stacko, unit), str(row.get("baseline_name") or "-"),
            fmt(base, unit), ratio, over, str(row.get("goal") or "-"), met]


def table(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["what", "stacko", "baseline", "", "ratio", "over", "goal", "met"]
    lines = [head] + [cells(r) for r in rows]
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    right = {1, 3, 4, 5}
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(v.rjust(w) if c in right else v.ljust(w)
                             for c, (v, w) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_module(name: str, path: str) -> Dict[str, Any]:
    result: Dict[str, Any] = {"title": name, "rows": [], "error": None}
    start = time.monotonic()
    try:
        module = load(name, path)
        result["title"] = str(getattr(module, "TITLE", name))
        print(f"\n== {result['title']} (bench_{name}.py)", flush=True)
        rows = module.run()
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError(f"run() returned {type(rows).__name__}, not a list of dicts")
        result["rows"] = rows
        print(table(rows), flush=True)
    except BaseException as e:      # one module's failure must not stop the others
        if isinstance(e, KeyboardInterrupt):
            raise
        result["error"] = f"{type(e).__name__}: {e}"
        if result["title"] == name:
            print(f"\n== bench_{name}.py", flush=True)
        print(f"FAILED: {result['error']}", flush=True)
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def write_results(data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    tmp = RESULTS + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RESULTS)


def main(argv: Optional[List[str]] = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Run stacko's benchmarks and print their tables.",
        epilog="modules: " + (", ".join(available) or "none") +
               ".  BENCH_REPEAT=0.3 makes a quick, noisier run; BENCH_DEBUG=1 shows tracebacks.")
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help="run only these (e.g. mount list); default: all")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in available]
    if unknown:
        parser.error(f"no module bench_{unknown[0]}.py (there are: {', '.join(available)})")
    chosen = args.modules or list(available)

    machine = common.machine_info()
    print(f"stacko benchmark: {machine['cpu']}, {machine['nproc']} CPUs, "
          f"Linux {machine['kernel']}, Python {machine['python']}, {machine['date']}", flush=True)
    results = {name: run_module(name, available[name]) for name in chosen}
    write_results({"version": 1, "machine": machine, "repeat_scale": common.SCALE,
                   "modules": results})
    failed = [n for n, r in results.items() if r["error"]]
    missed = [f"{n}: {r.get('what')}" for n, res in results.items() for r in res["rows"]
              if r.get("met") is False]
    print(f"\nfigures written to {os.path.relpath(RESULTS)}", flush=True)
    if missed:
        print("goals missed: " + "; ".join(missed), flush=True)
    if failed:
        print("modules that failed: " + ", ".join(failed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
