"""contrib/stacko-update@.service and stacko-update@.timer: systemd accepts them,
the timer is randomised and persistent, and the command the service runs, with
its settings file expanded as systemd expands it, updates the stackpoint."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Runner
from test_boot import INSTALLED_PATH, REPO, UNIT, parse_unit, stacko_executable

SERVICE = REPO / "contrib" / "stacko-update@.service"
TIMER = REPO / "contrib" / "stacko-update@.timer"
CONFIRM = REPO / "contrib" / "stacko-confirm@.service"


def test_the_service_reads_what_to_follow_from_etc_stacko() -> None:
    unit = parse_unit(SERVICE.read_text())
    assert unit["Unit"]["ConditionPathExists"] == ["/etc/stacko/update/%i.conf"]
    assert "/etc/stacko/update/%i.conf" in unit["Service"]["EnvironmentFile"]
    assert "network-online.target" in unit["Unit"]["After"]
    assert "stacko-stackpoint@%i.service" in unit["Unit"]["After"]
    assert unit["Service"]["Type"] == ["oneshot"]
    assert unit["Service"]["ExecStart"] == [
        f"{INSTALLED_PATH} update-stackpoint %i ${{REF}} $OPTIONS"]


def test_the_timer_is_randomised_and_persistent() -> None:
    timer = parse_unit(TIMER.read_text())
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["RandomizedDelaySec"] and timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_the_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: tests/install-deps.sh installs it (package "
                    "systemd) when the tests run as root")
    man = tmp_path / "man" / "man8"
    man.mkdir(parents=True)
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_manpage.py"),
                    str(man / "stacko.8")], check=True)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_COLOR="0")
    units = tmp_path / "units"
    units.mkdir()
    stacko = stacko_executable(tmp_path)
    for source, name in ((UNIT, "stacko-stackpoint@web-1.service"),
                         (SERVICE, "stacko-update@web-1.service"),
                         (TIMER, "stacko-update@web-1.timer"),
                         (CONFIRM, "stacko-confirm@web-1.service")):
        (units / name).write_text(source.read_text().replace(INSTALLED_PATH, stacko))
    for name in ("stacko-update@web-1.service", "stacko-update@web-1.timer"):
        proc = subprocess.run(["systemd-analyze", "verify", str(units / name)],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        if "Failed to initialize manager" in proc.stderr or "Failed to setup" in proc.stderr:
            pytest.skip(f"systemd-analyze cannot run in this container: {proc.stderr.strip()}")
        assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def expand(exec_start: str, name: str, conf: dict) -> list:
    """ExecStart as systemd expands it: %i, ${VAR} as one word, $VAR split at spaces."""
    argv = []
    for word in shlex.split(exec_start):
        if word.startswith("${"):
            argv.append(conf.get(word[2:-1], ""))
        elif word.startswith("$"):
            argv.extend(conf.get(word[1:], "").split())
        else:
            argv.append(word.replace("%i", name))
    return argv


@pytest.mark.mounts
def test_the_service_command_updates(stacko: Runner, root: Path, tmp_path: Path) -> None:
    from registryd import Registry, available, skopeo_push
    from ocigen import d, f, write_layout
    if not available():
        pytest.skip("docker-registry is needed (tests/install-deps.sh)")
    registry = Registry(tmp_path / "registry").start()
    try:
        layout = tmp_path / "layout"
        write_layout(layout, [[d("srv"), f("srv/version", b"v1")]], ref="v1")
        skopeo_push(registry, f"oci:{layout}:v1", "fleet/web:stable")
        stacko("new-image", "seed")
        stacko("new-stackpoint", "web-1", "seed")
        check = tmp_path / "web-1.check"
        check.write_text('#!/bin/sh\ntest "$(cat "$STACKO_DIR/srv/version")" = v1\n')
        check.chmod(0o755)
        conf = {"REF": f"{registry.host}/fleet/web:stable",
                "OPTIONS": f"--tls-verify=false --check {check} --keep 2"}
        exec_start = parse_unit(SERVICE.read_text())["Service"]["ExecStart"][0]
        argv = expand(exec_start.replace(INSTALLED_PATH, stacko_executable(tmp_path)),
                      "web-1", conf)
        env = dict(os.environ, STACKO_ROOT=str(root))
        subprocess.run(argv, env=env, check=True, capture_output=True)
        directory = Path(stacko("get-stackpoint-dir", "web-1").out)
        assert (directory / "srv/version").read_text() == "v1"
        proc = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
        assert "web-1 is up to date" in proc.stderr
    finally:
        registry.stop()
