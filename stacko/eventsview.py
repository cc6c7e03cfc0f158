"""list-events: what every stackpoint (or one) went through, one line per
event, oldest first, as `journalctl` and `podman events` show theirs.

The events themselves are kept with each stackpoint (events.py); this is only
a view of them: merged across stackpoints in time order, filtered by --since.
"""
from __future__ import annotations

import time

from stacko import events, stackpoints
from stacko.errors import UsageError
from stacko.quoting import escaped
from stacko.names import is_utc_time, utc_time
from stacko.records import Event
from stacko.state import Store

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_HINT = ("give a time in UTC (2026-11-25T21:00:00Z, 2026-11-25 21:00, 2026-11-25) "
              "or with its offset (…+01:00), or how long ago (30m, 2h, 1d, 1h30m)")


def parse_since(text: str, now: float | None = None) -> str:
    """--since TIME as stacko writes times (RFC 3339 UTC, Z).  A time without an
    offset is UTC, as every time stacko prints; a duration is that long ago."""
    word = text.strip()
    ago = _duration(word)
    if ago is not None:
        when = (time.time() if now is None else now) - ago
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    if len(word) == 10:                         # a date alone: its first second
        word += "T00:00:00"
    elif len(word) == 16:                       # to the minute
        word += ":00"
    shown = utc_time(word)
    if not is_utc_time(shown):
        raise UsageError(f"--since: not a time: {text!r}", hint=SINCE_HINT)
    return shown


def _duration(word: str) -> float | None:
    """Seconds of "90s", "30m", "1h30m", "2d"; None for anything else."""
    total, number = 0, ""
    for ch in word:
        if ch.isdigit() and ch.isascii():
            number += ch
        elif ch in UNITS and number:
            total += int(number) * UNITS[ch]
            number = ""
        else:
            return None
    return float(total) if word and not number else None


def list_events(store: Store, point: str | None = None,
                since: str | None = None) -> list[tuple[str, Event]]:
    """(stackpoint, event) pairs, oldest first; the events of one stackpoint
    keep their order where times are equal."""
    with store.locked(exclusive=False):
        points = store.load_stackpoints(strict=False)     # only shown, as list-stackpoints
    if point is not None:
        stackpoints.get(points, point)                     # no such stackpoint: says so
    found = [(name, e) for name in sorted(points) if point in (None, name)
             for e in points[name].events]
    found.sort(key=lambda pair: utc_time(pair[1].time))   # stable: ties keep their order
    if since is not None:
        found = [(n, e) for n, e in found if utc_time(e.time) >= since]
    return found


def line(point: str, event: Event) -> str:
    """TIME POINT ACTION FROM -> TO: REASON, one line whatever the reason holds."""
    when, _, rest = events.describe(event).partition(" ")
    return escaped(f"{when} {point} {rest}")


def to_dict(point: str, event: Event) -> dict[str, object]:
    return {"stackpoint": point, **event.to_dict()}
