"""run.py: the one place external commands run."""
from __future__ import annotations

import pytest

from stacko import run
from stacko.errors import CommandFailed


def test_output_and_locale() -> None:
    result = run.run(["sh", "-c", 'echo "$LC_ALL"; echo err >&2'])
    assert result.stdout == "C.UTF-8\n" and result.stderr == "err\n" and result.returncode == 0


def test_failure_carries_the_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        run.run(["sh", "-c", "echo broken >&2; exit 3"])
    assert info.value.returncode == 3 and "broken" in info.value.message
    assert run.run(["false"], check=False).returncode == 1


def test_a_missing_binary_is_named() -> None:
    with pytest.raises(CommandFailed, match="no-such-tool-here: command not found"):
        run.run(["no-such-tool-here"])


def test_verbose_logs_the_quoted_command_to_stderr(capsys, monkeypatch) -> None:
    monkeypatch.setattr(run, "verbose", True)
    run.run(["echo", "two words"], env={"X": "1"})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "+ X=1 echo 'two words'" in captured.err
