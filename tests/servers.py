"""Servers a test starts, each serving on a thread of its own, and shut down
and closed when the test ends (test_registry_proxy, test_registry_hostile)."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List


@contextlib.contextmanager
def threaded() -> Iterator[Callable[[Any], Any]]:
    """serve(server): serve_forever on a daemon thread; returns the server."""
    started: List[Any] = []

    def serve(server: Any) -> Any:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server
    try:
        yield serve
    finally:
        for server in started:
            server.shutdown()
            server.server_close()
