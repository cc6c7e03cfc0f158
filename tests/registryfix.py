"""The plain-HTTP registry fixture (tests/registryd.py), shared by the test
modules that pull and push: import it into a module to use it there."""
from __future__ import annotations

from typing import Iterator

import pytest

from registryd import Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield r.start()
    finally:
        r.stop()
