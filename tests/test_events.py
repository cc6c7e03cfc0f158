"""events.py and the records of events, tentative cutovers and pending checks."""
from __future__ import annotations

import json
import os
import re

import pytest

from stacko import events
from stacko.errors import CorruptState
from stacko.records import Event, Instance, PendingCheck, Stackpoint, Tentative


def point() -> Stackpoint:
    return Stackpoint(name="p", current="a", instances=(Instance("a", "aaaaa"),))


def test_add_keeps_the_last_events_in_rfc3339_utc() -> None:
    p = point()
    for n in range(events.MAX_EVENTS + 5):
        p = events.add(p, "set", "a", "b", f"reason {n}\nsecond line")
    assert len(p.events) == events.MAX_EVENTS >= 20
    assert p.events[0].reason == "reason 5 second line"          # one line, oldest dropped
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p.events[-1].time)
    assert len(events.add(p, "x", None, None, "y" * 1000).events[-1].reason) == events.REASON_MAX


def test_records_round_trip_and_old_files_stay_the_same() -> None:
    plain = point()
    assert set(plain.to_dict()) == {"name", "current", "path", "history", "instances"}
    full = plain._replace(
        tentative=Tentative("a", 1, 2),
        events=(Event("2026-01-01T00:00:00Z", "cutover", "b", "a", "why"),),
        checking=PendingCheck("b", "a", "true", 1, 2, "boot", "2026-01-01T00:00:00Z", "t"))
    data = json.loads(json.dumps(full.to_dict()))
    assert data["events"] == [{"time": "2026-01-01T00:00:00Z", "action": "cutover",
                               "from": "b", "to": "a", "reason": "why"}]
    assert Stackpoint.from_dict(data, "f") == full


@pytest.mark.parametrize("field,value", [
    ("tentative", {"image": "a", "tries_left": -1, "tries": 2}),
    ("tentative", {"image": "a", "tries_left": True, "tries": 2}),
    ("events", [{"action": "set"}]),
    ("events", "not a list"),
    ("checking", {"previous": "b", "image": "a"}),
])
def test_corrupt_records_name_the_file(field: str, value: object) -> None:
    data = point().to_dict()
    data[field] = value
    with pytest.raises(CorruptState, match="stackpoints.json"):
        Stackpoint.from_dict(data, "stackpoints.json")


def test_describe() -> None:
    assert events.describe(Event("T", "cutover", "a", "b", "why")) == "T cutover a -> b: why"
    assert events.describe(Event("T", "confirm", "b", "b", "")) == "T confirm b"


def test_a_pending_check_names_this_process_for_good() -> None:
    mine = events.pending_check("a", "b", "true")
    assert events.is_mine(mine) and events.check_alive(mine)
    assert not events.check_alive(mine._replace(start=mine.start + 1))    # a reused pid
    assert not events.check_alive(mine._replace(boot_id="another boot"))
    assert not events.is_mine(mine._replace(pid=1))
    assert events.process_start(os.getpid()) == mine.start
    assert events.end_leftovers(mine._replace(token="")) == []
