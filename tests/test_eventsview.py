"""list-events: the events of every stackpoint in time order, one line each,
and list-stackpoints fitted to an 80-column terminal (issue 23)."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import Runner
from stacko import eventsview
from stacko.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def test_parse_since() -> None:
    now = 1_700_000_000.0                                   # 2023-11-14T22:13:20Z
    assert eventsview.parse_since("2026-11-25T21:00:00Z") == "2026-11-25T21:00:00Z"
    assert eventsview.parse_since("2026-11-25T22:00:00+01:00") == "2026-11-25T21:00:00Z"
    assert eventsview.parse_since("2026-11-25 21:00") == "2026-11-25T21:00:00Z"
    assert eventsview.parse_since("2026-11-25") == "2026-11-25T00:00:00Z"
    assert eventsview.parse_since("2h", now) == "2023-11-14T20:13:20Z"
    assert eventsview.parse_since("1h30m", now) == "2023-11-14T20:43:20Z"
    assert eventsview.parse_since("1d", now) == "2023-11-13T22:13:20Z"
    for bad in ("", "yesterday-ish", "2h3", "h", "2026-13-45", "-1h", "１h"):
        with pytest.raises(UsageError):
            eventsview.parse_since(bad, now)


def events_of(root: Path, point: str, *events: tuple) -> None:
    path = root / "stackpoints.json"
    data = json.loads(path.read_text())
    data["stackpoints"][point]["events"] = [
        {"time": t, "action": a, "from": f, "to": to, "reason": r} for t, a, f, to, r in events]
    path.write_text(json.dumps(data))


@pytest.fixture
def history(stacko: Runner, root: Path) -> Runner:
    stacko("new-image", "a")
    stacko("new-image", "b")
    stacko("new-stackpoint", "web", "a")
    stacko("new-stackpoint", "db", "a")
    events_of(root, "web",
              ("2026-11-25T20:00:00Z", "cutover", "a", "b", "cutover-stackpoint"),
              ("2026-11-25T22:00:00Z", "check-failed", "b", "a",
               "the check `curl -f http://x` exited with status 22:\x1b[31m 503; fell back"))
    events_of(root, "db",
              ("2026-11-25T21:00:00+00:00", "set", "a", "b", "set-stackpoint-instance"),
              ("2026-11-25T22:00:00Z", "confirm", "b", "b", "confirm-stackpoint"))
    return stacko


def test_list_events_in_time_order_one_line_each(history: Runner) -> None:
    lines = history("list-events").out.splitlines()
    assert lines == [
        "2026-11-25T20:00:00Z web cutover a -> b: cutover-stackpoint",
        "2026-11-25T21:00:00+00:00 db set a -> b: set-stackpoint-instance",
        "2026-11-25T22:00:00Z db confirm b: confirm-stackpoint",
        "2026-11-25T22:00:00Z web check-failed b -> a: the check `curl -f http://x` exited "
        "with status 22:\\x1b[31m 503; fell back",
    ]
    assert history("list-events", "web").out.splitlines() == [lines[0], lines[3]]
    assert history("list-events", "--since", "2026-11-25 21:30").out.splitlines() == lines[2:]
    assert history("list-events", "db", "--since", "2026-11-25T22:30:00+01:00").out \
        .splitlines() == lines[2:3]
    assert history("list-events", "--since", "1h").out == ""


def test_list_events_json(history: Runner) -> None:
    found = json.loads(history("list-events", "--json").out)
    assert [(e["stackpoint"], e["action"]) for e in found] == [
        ("web", "cutover"), ("db", "set"), ("db", "confirm"), ("web", "check-failed")]
    assert set(found[0]) == {"stackpoint", "time", "action", "from", "to", "reason"}
    assert json.loads(history("list-events", "db", "--json", "--since", "2099-01-01").out) == []


def test_list_events_refusals(history: Runner) -> None:
    r = history("list-events", "wbe", rc=1)
    assert "no stackpoint named 'wbe'" in r.stderr and "did you mean 'web'?" in r.stderr
    r = history("list-events", "--since", "last tuesday", rc=2)
    assert "--since: not a time: 'last tuesday'" in r.stderr and "2h" in r.stderr
    assert r.stdout == ""


def test_list_events_of_an_empty_root(stacko: Runner, root: Path) -> None:
    assert stacko("list-events").out == ""
    assert stacko("list-events", "--json").out == "[]"


def on_terminal(root: Path, columns: int, *argv: str) -> str:
    """stdout of stacko run on a terminal of that many columns."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root), *argv],
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:            # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_list_stackpoints_fits_an_80_column_terminal(history: Runner, root: Path) -> None:
    piped = history("list-stackpoints").out.splitlines()
    assert max(map(len, piped)) > 80             # the whole table, for scripts
    assert "exited with status 22" in piped[2]
    shown = on_terminal(root, 80, "list-stackpoints").splitlines()
    assert len(shown) == 3 and shown[0].startswith("NAME")
    assert all(len(line) <= 80 for line in shown), shown
    # the same columns, in the same places, as far as they go
    assert [line.split()[:3] for line in shown] == [line.split()[:3] for line in piped]
    wide = on_terminal(root, 400, "list-stackpoints").splitlines()
    assert wide == piped
