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


# --- run_check: an admin's check command, on a short leash (no root needed) -----------
def test_check_runs_in_its_directory_with_its_environment(tmp_path) -> None:
    result = run.run_check('echo "$PWD $STACKO_X $LC_ALL"; echo oops >&2', cwd=str(tmp_path),
                           env={"STACKO_X": "y"}, timeout=30)
    assert result.passed and result.returncode == 0
    assert result.output == f"{tmp_path} y C.UTF-8\noops\n"


def test_check_output_is_bounded_to_its_tail(tmp_path) -> None:
    result = run.run_check("head -c 20000000 /dev/zero | tr '\\0' 'x'; echo; echo last; exit 4",
                           cwd=str(tmp_path), env={}, timeout=60)
    assert result.returncode == 4 and not result.passed
    assert len(result.output) <= run.CHECK_KEEP and result.output.endswith("x\nlast\n")
    lines = result.last_lines()
    assert lines[-1] == "last" and len(lines[-2]) == 300 and lines[-2].startswith("…")
    assert result.describe() == "exited with status 4"


def test_check_timeout_ends_the_whole_group(tmp_path) -> None:
    marker = tmp_path / "survivor"
    result = run.run_check(f"(sleep 2; touch '{marker}') & trap '' TERM; echo started; sleep 60",
                           cwd=str(tmp_path), env={}, timeout=0.5)
    assert result.returncode is None and result.describe() == "timed out"
    assert result.output == "started\n"
    import time
    time.sleep(2.5)
    assert not marker.exists()          # the background child was killed with the group


def test_check_does_not_wait_for_children_that_hold_its_output(tmp_path) -> None:
    marker = tmp_path / "survivor"
    result = run.run_check(f"(sleep 2; touch '{marker}') & echo bye", cwd=str(tmp_path),
                           env={}, timeout=60)
    assert result.passed and result.output == "bye\n"
    import time
    time.sleep(2.5)
    assert not marker.exists()


def test_check_killed_or_missing(tmp_path) -> None:
    killed = run.run_check("kill -TERM $$", cwd=str(tmp_path), env={}, timeout=30)
    assert killed.returncode == -15 and killed.describe() == "was killed by SIGTERM"
    missing = run.run_check("/no/such/check", cwd=str(tmp_path), env={}, timeout=30)
    assert missing.returncode == 127 and "not found" in missing.output
    assert run.run_check("true", cwd=str(tmp_path), env={}, timeout=30).last_lines() == []


def test_a_check_that_cannot_start_is_a_failed_check(tmp_path) -> None:
    result = run.run_check("true", cwd=str(tmp_path / "gone"), env={}, timeout=30)
    assert not result.passed and result.returncode == 127
    assert "cannot run sh -c" in result.output
