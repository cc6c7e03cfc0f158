"""The systemd template unit contrib/stacko-stackpoint@.service, and `make install`."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import Runner, populate

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "contrib" / "stacko-stackpoint@.service"
INSTALLED_PATH = "/usr/local/bin/stacko"      # what `make install` rewrites


def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """{section: {key: [values]}}; systemd allows a key many times."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).extend(value.split() if key in ORDERING else [value])
    return sections


ORDERING = {"After", "Before", "Conflicts", "WantedBy", "Wants", "Requires"}


def stacko_executable(tmp: Path) -> str:
    """A `stacko` that runs this checkout, for the unit's ExecStart."""
    script = tmp / "bin" / "stacko"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
                      f"exec {shlex.quote(sys.executable)} -m stacko \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def instantiate(tmp: Path, name: str) -> Path:
    """The unit as `make install` installs it, instantiated for stackpoint name."""
    text = UNIT.read_text().replace(INSTALLED_PATH, stacko_executable(tmp))
    unit = tmp / "units" / f"stacko-stackpoint@{name}.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)
    return unit


def test_unit_orders_the_mount_between_local_filesystems_and_services() -> None:
    unit = parse_unit(UNIT.read_text())
    assert "local-fs.target" in unit["Unit"]["After"]
    assert "sysinit.target" in unit["Unit"]["Before"]          # before every ordinary service
    assert "shutdown.target" in unit["Unit"]["Conflicts"]      # stopped (unmounted) at shutdown
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert unit["Service"]["Type"] == ["oneshot"] and unit["Service"]["RemainAfterExit"] == ["yes"]
    assert unit["Service"]["ExecStart"] == [f"{INSTALLED_PATH} mount-stackpoint %i"]
    assert unit["Service"]["ExecStop"] == [f"{INSTALLED_PATH} umount-stackpoint %i"]
    assert unit["Install"]["WantedBy"] == ["sysinit.target"]


def test_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: tests/install-deps.sh installs it (package "
                    "systemd) when the tests run as root")
    # The unit's Documentation= names man:stacko(8): give man the generated page.
    man = tmp_path / "man" / "man8"
    man.mkdir(parents=True)
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_manpage.py"),
                    str(man / "stacko.8")], check=True)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_COLOR="0")
    for name in ("web-1", "db.v2"):
        unit = instantiate(tmp_path, name)
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, env=env, cwd=tmp_path)
        if "Failed to initialize manager" in proc.stderr or "Failed to setup" in proc.stderr:
            pytest.skip(f"systemd-analyze cannot run in this container: {proc.stderr.strip()}")
        assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    # And it does catch a broken unit, so the check above means something.
    broken = tmp_path / "units" / "stacko-stackpoint@x.service"
    broken.write_text(UNIT.read_text())       # /usr/local/bin/stacko is not installed here
    if not os.access(INSTALLED_PATH, os.X_OK):
        proc = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                              text=True, env=env, cwd=tmp_path)
        assert proc.returncode != 0 and "not executable" in proc.stderr


@pytest.mark.mounts
def test_unit_commands_mount_at_start_and_unmount_at_stop(stacko: Runner, root: Path,
                                                         tmp_path: Path) -> None:
    """What systemd runs: ExecStart then ExecStop, %i the stackpoint's name and the
    root from the environment (/etc/default/stacko's STACKO_ROOT)."""
    populate(stacko, "os", {"etc/hostname": "box"})
    stacko("new-stackpoint", "web-1", "os")
    service = parse_unit(instantiate(tmp_path, "web-1").read_text())["Service"]
    env = dict(os.environ, STACKO_ROOT=str(root))

    def run(key: str) -> None:
        argv = [w.replace("%i", "web-1") for w in shlex.split(service[key][0])]
        subprocess.run(argv, env=env, check=True, capture_output=True)

    run("ExecStart")
    stacko("is-stackpoint-mounted", "web-1")
    directory = Path(stacko("get-stackpoint-dir", "web-1").out)
    assert (directory / "etc/hostname").read_text() == "box"
    run("ExecStart")                        # a restart: already mounted is success
    run("ExecStop")
    assert not (directory / "etc/hostname").exists()
    run("ExecStop")                         # stopping twice is fine too


@pytest.mark.skipif(shutil.which("make") is None, reason="make is missing")
def test_make_install_puts_everything_under_destdir(tmp_path: Path) -> None:
    # With the system's interpreter by default, whatever python3 is first on PATH.
    if subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"],
                      capture_output=True).returncode != 0:
        pytest.skip("/usr/bin/python3 has no pip (Debian: python3-pip)")
    dest = tmp_path / "dest"
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python3").symlink_to(sys.executable)    # a pyenv shim or a venv, first on PATH
    proc = subprocess.run(
        ["make", "-C", str(REPO), "install", f"DESTDIR={dest}", "PREFIX=/usr",
         "PIP_INSTALL_FLAGS=--no-deps --quiet"],
        capture_output=True, text=True,
        env=dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}"))
    if proc.returncode != 0 and ("No matching distribution" in proc.stderr
                                 or "Could not find a version" in proc.stderr):
        pytest.skip(f"pip cannot build the package offline: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    unit = dest / "usr/lib/systemd/system/stacko-stackpoint@.service"
    confirm = dest / "usr/lib/systemd/system/stacko-confirm@.service"
    assert (dest / "usr/share/man/man8/stacko.8").read_text().startswith(".\\\"")
    assert "complete -F _stacko stacko" in \
        (dest / "usr/share/bash-completion/completions/stacko").read_text()
    [script] = [p for p in dest.rglob("stacko") if p.parent.name == "bin"]
    installed = "/" + str(script.relative_to(dest))
    # The units run the console script where pip put it (under DESTDIR here), and
    # the script runs the system's interpreter, not the one first on PATH.
    assert f"ExecStart={installed} mount-stackpoint %i" in unit.read_text()
    assert f"ExecStart={installed} confirm-stackpoint %i" in confirm.read_text()
    update = dest / "usr/lib/systemd/system/stacko-update@.service"
    assert f"ExecStart={installed} update-stackpoint %i" in update.read_text()
    assert (dest / "usr/lib/systemd/system/stacko-update@.timer").is_file()
    assert script.read_text().splitlines()[0] == "#!/usr/bin/python3"
    assert not installed.startswith(("/root", str(REPO)))


CONFIRM = REPO / "contrib" / "stacko-confirm@.service"


def test_confirm_unit_runs_after_a_complete_boot() -> None:
    """systemd's automatic boot assessment: boot-complete.target is reached only
    when the admin's health checks ordered before it succeeded."""
    unit = parse_unit(CONFIRM.read_text())
    assert "boot-complete.target" in unit["Unit"]["Requires"]
    assert "boot-complete.target" in unit["Unit"]["After"]
    assert "stacko-stackpoint@%i.service" in unit["Unit"]["After"]
    assert unit["Service"]["Type"] == ["oneshot"]
    assert unit["Service"]["ExecStart"] == [f"{INSTALLED_PATH} confirm-stackpoint %i"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_confirm_unit_verifies(tmp_path: Path) -> None:
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
    # The mount unit it is ordered after, beside it, as `make install` puts them.
    (units / "stacko-stackpoint@web-1.service").write_text(
        UNIT.read_text().replace(INSTALLED_PATH, stacko_executable(tmp_path)))
    unit = units / "stacko-confirm@web-1.service"
    unit.write_text(CONFIRM.read_text().replace(INSTALLED_PATH, stacko_executable(tmp_path)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    if "Failed to initialize manager" in proc.stderr or "Failed to setup" in proc.stderr:
        pytest.skip(f"systemd-analyze cannot run in this container: {proc.stderr.strip()}")
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.mounts
def test_confirm_unit_command_confirms(stacko: Runner, root: Path, tmp_path: Path) -> None:
    populate(stacko, "v1", {"f": "1"})
    populate(stacko, "v2", {"f": "2"})
    stacko("new-stackpoint", "web-1", "v1")
    stacko("mount-stackpoint", "web-1")
    stacko("cutover-stackpoint", "web-1", "v2", "--tries", "1")
    text = CONFIRM.read_text().replace(INSTALLED_PATH, stacko_executable(tmp_path))
    argv = [w.replace("%i", "web-1")
            for w in shlex.split(parse_unit(text)["Service"]["ExecStart"][0])]
    env = dict(os.environ, STACKO_ROOT=str(root))
    subprocess.run(argv, env=env, check=True, capture_output=True)
    point = next(p for p in json.loads(stacko("list-stackpoints", "--json").out))
    assert point["tentative"] is None and point["events"][-1]["action"] == "confirm"
    subprocess.run(argv, env=env, check=True, capture_output=True)     # again: nothing to do
