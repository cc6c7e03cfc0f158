"""Tentative and checked cutovers: updates that have not proved themselves yet.

A cutover --tries N lasts N mounts of the unmounted stackpoint (N boots)
unless confirm-stackpoint makes it permanent; until then, what would build on
it or delete what it falls back to is refused.  (A cutover --check whose
command died during its check: pending.py.)
"""
from __future__ import annotations

from stacko import events
from stacko.errors import StackpointBusy
from stacko.log import log
from stacko.records import Image, Stackpoint, Tentative, replace
from stacko.state import Store
from stacko.guard import _refuse_if_held
from stacko.switch import _mount, _switch


def active_tentative(point: Stackpoint) -> Tentative | None:
    """The tentative cutover point is on, if any (a record left on another image
    than the current one is stale: nothing would ever use it)."""
    t = point.tentative
    return t if t is not None and t.image == point.current else None


def refuse_if_tentative(point: Stackpoint, action: str, deleting: str | None = None) -> None:
    """A tentative cutover (--tries N) is an update that has not proved itself.
    Until confirm-stackpoint or fallback-stackpoint decides it, refuse what would
    build on it or move away from it (cutover, set, commit: the unproven instance
    would go on the history, or into an image, as if it were a good one) and what
    would delete the instance it falls back to (deleting: that image).  Commands
    that touch neither keep the tentative state as it is."""
    t = active_tentative(point)
    if t is None:
        return
    previous = point.history[-1] if point.history else None
    if deleting is not None and deleting != previous:
        return
    tries = f"{t.tries_left} tr{'y' if t.tries_left == 1 else 'ies'} left"
    if deleting is not None:
        message = (f"{action}: the instance of {deleting!r} is what the tentative cutover of "
                   f"stackpoint {point.name!r} to {t.image!r} ({tries}) falls back to if it "
                   "is not confirmed")
    else:
        message = (f"{action}: stackpoint {point.name!r} is on a tentative cutover to "
                   f"{t.image!r} ({tries}) that is not confirmed yet")
    back = (f", `stacko fallback-stackpoint {point.name}` goes back to {previous!r}"
            if previous is not None else "")
    raise StackpointBusy(message, hint=f"decide it first: `stacko confirm-stackpoint "
                                       f"{point.name}` keeps {t.image!r}{back}")


def _boot_try(store: Store, images: dict[str, Image], point: Stackpoint) -> str:
    """Mount a tentative stackpoint that was not mounted (a boot): use one try,
    or, with none left, fall back to the instance that was current before."""
    points = store.load_stackpoints()
    tentative = point.tentative
    assert tentative is not None
    if tentative.image != point.current:
        new = replace(point, tentative=None)     # moved on since (commit-stackpoint)
    elif tentative.tries_left > 0:
        new = replace(point, tentative=replace(tentative, tries_left=tentative.tries_left - 1))
    elif not point.history:
        # Its earlier instance was deleted: nothing to fall back to, and a boot must go on.
        log(f"stacko: warning: stackpoint {point.name!r}: the tentative cutover to "
            f"{tentative.image!r} was not confirmed, but there is no earlier instance "
            f"to fall back to; mounting {point.current!r}")
        new = events.add(replace(point, tentative=None), "boot-fallback", point.current,
                         point.current, "not confirmed, and no earlier instance to fall back to")
    else:
        new = None
    if new is not None:
        _refuse_if_held(store, new, new.current, "mount-stackpoint")
        # The try is used before the mount: a boot that dies mounting it has used it.
        store.save_stackpoints({**points, point.name: new})
        try:
            return _mount(store, images, new, new.current_instance())
        except BaseException:
            store.save_stackpoints(points)
            raise
    previous = point.history[-1]
    boots = f"{tentative.tries} boot{'s' if tentative.tries != 1 else ''}"
    new = replace(point, current=previous, history=point.history[:-1], tentative=None)
    new = events.add(new, "boot-fallback", point.current, previous,
                     f"the tentative cutover was not confirmed after {boots}")
    _switch(store, images, points, new, None, mount=True, action="mount-stackpoint")
    log(f"stacko: stackpoint {point.name!r}: the cutover to {point.current!r} was not "
        f"confirmed after {boots}; fell back to {previous!r}")
    return store.stackpoint_dir(point)
