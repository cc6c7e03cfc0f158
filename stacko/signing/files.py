"""Reading the small files the signing configuration names: policies, keys,
registries.d.  Admins name them, but a FIFO or a device in their place must
not hang a pull or fill memory: opened non-blocking, a regular file only,
read to a bound."""
from __future__ import annotations

import os
import stat


def read_regular(path: str, limit: int) -> bytes:
    """At most limit + 1 bytes of the regular file path (the caller tells
    "too large" by the length); OSError as open(2) and read(2) give it, and
    IsADirectoryError-like OSError for anything that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        return f.read(limit + 1)
