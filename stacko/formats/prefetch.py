"""A stream read ahead by a thread of its own, so that decompressing and
hashing a layer (ISA-L, libzstd and hashlib let go of the GIL while they work)
run on one core while the unpacker creates files on the other.

The reader thread owns the stream until ``close()`` has joined it: whoever
reads the stream afterwards (to drain it and check its digest) reads on from
where the thread stopped, so every byte is hashed once and in order.
"""
from __future__ import annotations

import queue
import threading

CHUNK = 1 << 20
DEPTH = 4             # chunks read ahead: at most 4 MiB waiting


class Prefetched:
    """read() gives the next chunk the thread read (of at most CHUNK bytes, whatever
    is asked), b"" at the end; an error of the stream is raised here."""

    def __init__(self, stream: object, chunk: int = CHUNK) -> None:
        self.stream, self.chunk = stream, chunk
        self.queue: queue.Queue = queue.Queue(maxsize=DEPTH)
        self.stop = False
        self.done = False
        self.thread = threading.Thread(target=self._run, name="stacko-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop:
                data = self.stream.read(self.chunk)  # type: ignore[attr-defined]
                self.queue.put(data)
                if not data:
                    return
        except BaseException as e:       # raised in the reading thread, by read()
            self.queue.put(e)

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if not item:
            self.done = True
        return item

    def close(self) -> None:
        """Stop the thread (after the read it is in) and wait for it."""
        self.stop = True
        while self.thread.is_alive():
            try:                       # make room for a put the thread waits in
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
