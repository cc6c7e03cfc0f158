"""A few blocking calls at once, on threads: the registry's round trips.

concurrent.futures would do, but it imports logging (and logging traceback,
string, weakref...): ~7 ms of a push that packs nothing, more than the round
trips it overlaps (docs/startup.md).  Threads are daemons: Ctrl-C or SIGTERM
ends the command without waiting for a request that hangs (each has its own
deadline anyway).
"""
from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable, Iterable


class Task:
    """One call on a thread of its own, started at once."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(func, args), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., object], args: tuple) -> None:
        try:
            self._value = func(*args)
        except BaseException as e:      # handed to whoever asks for the result
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> object:
        """What the call returned, once it has; what it raised is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def map_all(func: Callable[..., object], items: Iterable[object],
            workers: int) -> list:
    """[func(item) for item in items], at most workers calls at once, in the
    order of items.  Once a call fails no new one starts; when all have
    stopped, the first failure in the order of items is raised."""
    todo = list(items)
    if len(todo) <= 1:
        return [func(item) for item in todo]
    results: list = [None] * len(todo)
    errors: list = [None] * len(todo)
    lock = threading.Lock()
    nxt = [0]

    def work() -> None:
        while True:
            with lock:
                n = nxt[0]
                if n >= len(todo) or any(e is not None for e in errors):
                    return
                nxt[0] = n + 1
            try:
                results[n] = func(todo[n])
            except BaseException as e:
                errors[n] = e
    tasks = [Task(work) for _ in range(min(workers, len(todo)))]
    for task in tasks:
        task.wait()
    for error in errors:
        if error is not None:
            raise error
    return results
