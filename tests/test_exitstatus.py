"""Every exit status in one place (stacko.exitstatus), and the README's table and
the man page's EXIT STATUS made from it (issue 23)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from stacko import errors, exitstatus

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import gen_manpage  # noqa: E402


def test_readme_exit_table_is_exitstatus() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| exit status | meaning |"):]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", table[:table.index("\n\n")], re.M)
    assert [(int(n), m) for n, m in rows] == list(exitstatus.STATUSES)


def test_man_page_exit_status_is_exitstatus() -> None:
    page = gen_manpage.render()
    section = page[page.index(".SH EXIT STATUS"):page.index(".SH BOOT")]
    assert re.findall(r"^\.B (\d+)$", section, re.M) == \
        [str(n) for n, _ in exitstatus.STATUSES]
    assert "SIGTERM" in section and "Ctrl\\-C" in section


def test_sigterm_and_ctrl_c_exit_as_shells_report_them() -> None:
    import signal
    assert errors.Interrupted("x").exit_code == exitstatus.TERMINATED == 128 + signal.SIGTERM
    assert exitstatus.INTERRUPTED == 128 + signal.SIGINT
    assert {n for n, _ in exitstatus.STATUSES} == {0, 1, 2, 130, 143}


def catches(pid: int, signum: int) -> bool:
    """Whether process pid has a handler for signum (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signum - 1)))


def test_sigterm_during_an_import_exits_143_and_records_nothing(root: Path) -> None:
    import os
    import signal
    import subprocess
    import time
    proc = subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root),
                             "import-image", "slow", "-"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        proc.stdin.write(b"\0" * 512)      # the start of a tar that never ends
        proc.stdin.flush()
        # Signalled once it catches SIGTERM (a start-up under load can take
        # seconds): before that, the signal would kill it before stacko runs.
        deadline = time.monotonic() + 120
        while not catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert "slow" not in ((root / "images.json").read_text()
                          if (root / "images.json").exists() else "")
