"""`make demo` as a new admin runs it: it works, shows how images get their
files, and its output is plain text when it is not on a terminal."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.mounts
def test_demo_runs_and_prints_plain_text_to_a_pipe(tmp_path: Path) -> None:
    wrapper = tmp_path / "stacko"          # this checkout's stacko, as one command
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m stacko \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(REPO / "demo.sh"), str(wrapper)], capture_output=True,
                          env=env, timeout=300)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "\033" not in out and "\033" not in err        # no colour escapes into a pipe
    assert "$ stacko edit-image apps-1.0" in err
    assert "$ stacko import-image apps-2.0 " in err       # both ways an image gets files
    assert "bin/app                      app version 2.0" in out
    assert "Traceback" not in err


def test_readme_says_how_to_get_stacko_on_path_where_the_example_starts() -> None:
    readme = (REPO / "README.md").read_text()
    example = readme[readme.index("## Example"):]
    before_first_command = example[:example.index("stacko new-image")]
    assert "make install" in before_first_command
    assert ".venv/bin/stacko" in before_first_command
