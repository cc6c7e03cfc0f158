"""The pending check of a checked cutover, as the stackpoint's record keeps it.

cutover-stackpoint --check records a PendingCheck in the same write as the
switch (see checked.py).  While the stacko that runs the check is alive,
nothing else may change the stackpoint (refuse_if_checking).  Once it is dead
(SIGKILL, a power cut) the record names an image that never passed its check,
and nothing may build on it: every command that changes the stackpoint first
undoes the cutover (stackpoints.undo_interrupted_check), the boot's
mount-stackpoint and `check --repair` included; commit-stackpoint, which could
not tell which files the admin meant to keep, refuses until it is undone
(refuse_if_interrupted).

The undo, like a failed check, puts the stackpoint back as it was before the
cutover (back_from_check): the same current instance, the same history, the
same instances (the checked one is kept for inspection, off the history), and
the events it had, plus the cutover's and the check's own.

Only records here, and no I/O beyond reading /proc through events: the
switching lives in stackpoints.py, which imports this.
"""
from __future__ import annotations

from stacko import events
from stacko.errors import StackpointBusy
from stacko.records import PendingCheck, Stackpoint, replace


def interrupted(point: Stackpoint) -> PendingCheck | None:
    """point's pending check if the command that ran it is gone, else None."""
    pending = point.checking
    if pending is None or events.check_alive(pending):
        return None
    return pending


def refuse_if_checking(point: Stackpoint, action: str) -> None:
    """A checked cutover runs its check without the lock (a long check must not
    block listings and boot mounts); meanwhile nothing else may change that
    stackpoint, or the undo of a failed check would undo someone else's work."""
    pending = point.checking
    if pending is not None and not events.is_mine(pending) and events.check_alive(pending):
        raise StackpointBusy(
            f"{action}: stackpoint {point.name!r} is being checked after its cutover to "
            f"{pending.image!r} (process {pending.pid} runs `{events.one_line(pending.command, 80)}`)",
            hint="wait for the check to end; it keeps or undoes the cutover")


def refuse_if_interrupted(point: Stackpoint, action: str) -> None:
    """For a command that cannot simply undo first (commit-stackpoint: it would
    commit other files than the ones the admin sees): refuse, changing nothing."""
    pending = interrupted(point)
    if pending is None:
        return
    raise StackpointBusy(
        f"{action}: stackpoint {point.name!r} is on image {pending.image!r}, whose checked "
        f"cutover was interrupted during its check (process {pending.pid} is gone): "
        "the image never passed its check",
        hint=f"`stacko fallback-stackpoint {point.name}` (or `stacko check --repair`) "
             f"undoes the cutover, back to {pending.previous!r}")


def back_from_check(point: Stackpoint, action: str, reason: str) -> Stackpoint:
    """point as it was before its checked cutover, plus the check's event: on the
    instance that was current before, with the history it had then.  The checked
    instance is kept (off the history, unless it was on it before)."""
    pending = point.checking
    assert pending is not None
    if pending.history is not None:
        history = tuple(h for h in pending.history
                        if h != pending.previous and point.instance(h) is not None)
    else:
        # Recorded by a stacko that did not keep the history: the best guess.
        history = point.history[:-1] if point.history and point.history[-1] == pending.previous \
            else tuple(h for h in point.history if h != pending.previous)
    new = replace(point, current=pending.previous, history=history, checking=None,
                  tentative=None)
    return events.add(new, action, pending.image, pending.previous, reason)


def undone(action: str, point: Stackpoint, pending: PendingCheck) -> str:
    """The stderr line of an undo done on the way (by action, if not None)."""
    by = f"{action}: " if action else ""
    return (f"stacko: {by}stackpoint {point.name!r}: the checked cutover to "
            f"{pending.image!r} was interrupted during its check (process {pending.pid} "
            f"died); fell back to {pending.previous!r}")
