#!/usr/bin/env python3
"""Where `pip install --root ROOT` put the stacko console script, as the
installed system will see it (without ROOT): read from the RECORD that pip
wrote beside the package, so that the systemd units name the script that was
really installed, whatever scheme the interpreter uses (Debian's puts it in
/usr/local/bin, a venv in its bin/, a pyenv in root's home).

    python3 tools/installed_script.py [ROOT]       (ROOT: DESTDIR, default /)
"""
from __future__ import annotations

import csv
import glob
import os
import sys


def script_in(record: str) -> str | None:
    """The absolute path of bin/stacko that a dist-info RECORD lists."""
    site = os.path.dirname(os.path.dirname(record))
    with open(record, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            path = row[0] if row else ""
            if os.path.basename(path) == "stacko" and \
                    os.path.basename(os.path.dirname(path)) == "bin":
                return os.path.normpath(os.path.join(site, path))
    return None


def main(argv: list[str]) -> int:
    root = os.path.abspath(argv[1]) if len(argv) > 1 and argv[1] else "/"
    if root == "/":
        import importlib.metadata
        dist = importlib.metadata.distribution("stacko")
        records = [str(dist.locate_file(f)) for f in dist.files or () if f.name == "RECORD"]
    else:
        records = glob.glob(os.path.join(glob.escape(root), "**", "stacko-*.dist-info",
                                         "RECORD"), recursive=True)
    found = {s for s in map(script_in, records) if s}
    if len(found) != 1:
        print(f"installed_script: {len(found)} stacko scripts recorded under {root}: "
              f"{sorted(found)}", file=sys.stderr)
        return 1
    script = found.pop()
    if root != "/":
        script = "/" + os.path.relpath(script, root)
    print(script)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
