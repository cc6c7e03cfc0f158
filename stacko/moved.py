"""What moved: the tally of a pull or a push, and the progress line.

On success pull-image and push-image print one summary line to stderr
(``stacko: pulled 1 of 3 layers, 1.0 MB, 2 reused``); ``-v`` logs each blob
as it is fetched, reused, mounted, skipped or uploaded, with its digest and
size.  On a terminal a progress line appears once an operation has taken
longer than a second, and is erased when it ends.  Nothing here goes to stdout.
"""
from __future__ import annotations

import sys
import threading

from stacko.log import debug

PROGRESS_AFTER = 1.0       # seconds before a progress line is shown at all


def size_text(size: int | None) -> str:
    """Decimal units, as registries and podman report sizes: 999 B, 1.0 MB."""
    if size is None:
        return "? B"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def blob_text(digest: str | None, size: int | None) -> str:
    return f"{digest or '(no digest)'} ({size_text(size)})"


class Tally:
    """Counts the layers of one pull or push as they are dealt with; thread-safe."""

    def __init__(self, verb: str) -> None:
        self.verb = verb                 # "pulled" or "pushed"
        self.layers = 0                  # of the image
        self.moved = 0                   # fetched or uploaded
        self.bytes = 0                   # of the layers that moved
        self.reused = 0                  # pull: already here
        self.there = 0                   # push: the registry had them
        self.mounted = 0                 # push: linked from another repository
        self._lock = threading.Lock()

    def note(self, what: str, digest: str | None, size: int | None, layer: bool = True,
             detail: str = "") -> None:
        """what: fetched, uploaded (they moved), reused, skipped or mounted."""
        debug(f"stacko: {what} {blob_text(digest, size)}{detail}"
              + ("" if layer else " (config)"))
        if not layer:
            return
        with self._lock:
            if what in ("fetched", "uploaded"):
                self.moved += 1
                self.bytes += size or 0
            elif what == "reused":
                self.reused += 1
            elif what == "skipped":
                self.there += 1
            elif what == "mounted":
                self.mounted += 1

    def summary(self) -> str:
        line = (f"stacko: {self.verb} {self.moved} of {self.layers} "
                f"layer{'s' if self.layers != 1 else ''}, {size_text(self.bytes)}")
        if self.verb == "pushed":
            return line + f", {self.there} already there, {self.mounted} mounted"
        return line + f", {self.reused} reused"


class Progress:
    """One line on a terminal, rewritten in place; shown only once the
    operation has lasted PROGRESS_AFTER seconds (a timer shows it then, even
    when no new message came meanwhile: one long layer), so quick ones print
    nothing."""

    def __init__(self) -> None:
        self.message = ""
        self.shown = False
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        if not sys.stderr.isatty():
            return
        with self.lock:
            self.message = message
            if not message:
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                if self.shown:
                    self._write("\r\033[K")
                self.shown = False
            elif self.shown:
                self._write(f"\r\033[Kstacko: {message}")
            elif self.timer is None:
                self.timer = threading.Timer(PROGRESS_AFTER, self._show)
                self.timer.daemon = True
                self.timer.start()

    def _show(self) -> None:
        with self.lock:
            if self.message and self.timer is not None:
                self._write(f"\r\033[Kstacko: {self.message}")
                self.shown = True

    @staticmethod
    def _write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()


progress = Progress()
