"""mypy finds no error in the modules pyproject.toml's [tool.mypy] lists, and
sees @record classes for what they are (dataclass_transform, records.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("mypy")


def mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    config = ["--config-file", str(REPO / "pyproject.toml")] if not args else \
        ["--config-file", "", "--follow-imports", "silent"]
    return subprocess.run([sys.executable, "-m", "mypy", *config,
                           "--cache-dir", str(tmp_path / "cache"), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def test_the_typed_modules_have_no_error(tmp_path: Path) -> None:
    result = mypy(tmp_path)
    assert result.returncode == 0, result.stdout


def test_records_are_seen_by_the_type_checker(tmp_path: Path) -> None:
    """The test above can fail: a record's fields and immutability are checked."""
    result = mypy(tmp_path, "-c", "from stacko.records import Instance\n"
                                  "i = Instance(image=1, layer='l')\n"
                                  "i.layer = 'm'\n"
                                  "Instance('a')\n")
    assert result.returncode == 1, result.stdout
    assert 'Argument "image" to "Instance" has incompatible type "int"' in result.stdout
    assert 'Property "layer" defined in "Instance" is read-only' in result.stdout
    assert 'Missing positional argument "layer"' in result.stdout
