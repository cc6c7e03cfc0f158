"""Each command imports only what it uses.

stacko runs from boot scripts and shell prompts, where starting Python and
importing modules is most of a command's time (docs/startup.md).  Each test
runs one command in a fresh interpreter, as the console script does, and
fails when a module on the command's deny list was imported: typing, ctypes
for commands that do not mount, tarfile and hashlib for anything but the
archive commands, ssl and http for everything but the registry commands.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Runner
from ocigen import d, f, tar_dir, write_layout
from registryd import Registry, available
from registryfix import registry  # noqa: F401  (the fixture)
from stacko.formats import ocisource

REPO = Path(__file__).resolve().parent.parent

# Runs main() as the console script would, then writes what was imported.
PROBE = """
import os, sys
sys.stdout = open(os.devnull, "w")
from stacko.cli import main
status = main(sys.argv[2:])
modules = sorted(sys.modules)     # before the probe's own json
import json
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "modules": modules}, f)
"""

# Never needed by a command that neither talks to a registry nor reads or
# writes an archive.  typing: stacko annotates with builtin generics and
# collections.abc; dataclasses pulls in inspect; shutil (bz2, lzma) is what
# argparse imports for the terminal width unless told it.
HEAVY = {"typing", "tarfile", "hashlib", "ssl", "http.client", "dataclasses", "inspect",
         "shutil", "bz2", "lzma", "isal", "zstandard", "subprocess", "secrets",
         "stacko.signing"}
# ctypes is for the new mount API only.
NO_MOUNT = HEAVY | {"ctypes", "stacko.mountapi"}


def imported(root: Path, *argv: str, status: int | None = None) -> set[str]:
    """The modules a fresh interpreter has after `stacko --root ROOT argv...`
    (which must exit with status, when given)."""
    out = root.parent / "probe.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    run = subprocess.run([sys.executable, "-c", PROBE, str(out), "--root", str(root), *argv],
                         check=True, env=env, stderr=subprocess.PIPE)
    data = json.loads(out.read_text())
    out.unlink()
    assert status is None or data["status"] == status, (argv, run.stderr.decode())
    return set(data["modules"])


@pytest.fixture
def state(stacko: Runner, root: Path) -> Path:
    stacko("new-image", "base")
    stacko("new-image", "app", "base")
    stacko("new-stackpoint", "web", "app")
    return root


@pytest.mark.parametrize("argv", [
    ("list-images",), ("list-images", "--json"), ("list-images", "--tree"),
    ("list-stackpoints",), ("list-stackpoints", "--json"),
    ("list-events",), ("list-events", "web", "--since", "1h", "--json"),
    ("get-stackpoint-dir", "web"), ("is-stackpoint-mounted", "web"),
    ("--version",), ("list-images", "-h"), ("no-such-command",),
])
def test_listings_and_help_import_nothing_heavy(state: Path, argv: tuple[str, ...]) -> None:
    # _socket too: lean.py, which every command imports, loads it only for a registry
    assert imported(state, *argv) & (NO_MOUNT | {"socket", "_socket"}) == set()


@pytest.mark.parametrize("argv, needs", [
    (("new-image", "other"), {"hashlib"}),     # an image is sealed with its content's digest
    (("new-stackpoint", "db", "base"), set()), (("check",), set()), (("df",), set()),
    (("diff-stackpoint", "web"), set()), (("prune-stackpoint", "web", "--keep", "1"), set()),
])
def test_commands_that_do_not_mount_import_nothing_heavy(state: Path, argv: tuple[str, ...],
                                                         needs: set[str]) -> None:
    assert imported(state, *argv) & NO_MOUNT == needs


@pytest.mark.mounts
def test_mount_and_umount_import_ctypes_and_nothing_heavy(state: Path) -> None:
    # The mount calls (the new API's, or mount(2) and umount2) are made through
    # ctypes' C core, _ctypes: the ctypes package around it costs a mount ~2 ms
    # (see stacko/mountapi.py), and no mount(8) or umount(8) is started.
    for argv in (("mount-stackpoint", "web"), ("umount-stackpoint", "web")):
        assert imported(state, *argv) & (HEAVY | {"ctypes"}) == set(), argv


def test_the_probe_sees_imports(state: Path, workdir: Path) -> None:
    """The test above can fail: export-image does import tarfile and hashlib."""
    modules = imported(state, "export-image", "base", str(workdir / "out.tar"))
    assert {"tarfile", "hashlib", "isal"} <= modules


# The archive and registry commands import what does their work (tarfile,
# hashlib, json, stacko's own HTTP, ssl for TLS) and nothing for their annotations or
# records: typing, and dataclasses with inspect, ast and dis, were ~10 ms of
# each of their starts; platform ~1.4 ms for one os.uname().
NO_TYPING = {"typing", "dataclasses", "inspect", "ast", "dis", "platform", "secrets"}
# But a library imports some of them itself: zstandard's __init__ platform
# and, before Python 3.12, typing.  Only the commands that load it may.
# (isal.igzip imports typing, and gzip: stacko builds its C reader without it.)
BROUGHT_BY = {None: set(), "zstandard": {"platform", "typing"}}


def check_no_typing(modules: set[str], cause: str | None, argv: tuple[str, ...]) -> None:
    assert cause is None or cause in modules, argv
    assert modules & NO_TYPING <= BROUGHT_BY[cause], argv
    assert modules & {"isal.igzip", "gzip"} == set(), argv

STACKO_MODULES = """
import os, sys, importlib
import stacko
top = os.path.dirname(stacko.__file__)
for folder, _, files in os.walk(top):
    for name in sorted(files):
        if name.endswith(".py") and name != "__main__.py":
            rel = os.path.relpath(os.path.join(folder, name[:-3]), os.path.dirname(top))
            importlib.import_module(rel.replace(os.sep, ".").replace(".__init__", ""))
print(" ".join(sorted(sys.modules)))
"""


def test_no_module_of_stacko_imports_typing() -> None:
    """Every module of stacko/ at once, as imported: none brings typing,
    dataclasses, inspect or platform (decompressors are imported where used)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    modules = set(subprocess.run([sys.executable, "-c", STACKO_MODULES], check=True, env=env,
                                 stdout=subprocess.PIPE, text=True).stdout.split())
    assert {"stacko.oci", "stacko.registry.pull", "stacko.registry.push",
            "stacko.formats.ocisource", "stacko.formats.layertar", "tarfile"} <= modules
    assert modules & NO_TYPING == set()


def test_archive_commands_import_no_typing(state: Path, workdir: Path) -> None:
    archive, layout, rootfs = workdir / "base.tar", workdir / "layout", workdir / "rootfs"
    write_layout(layout, [[d("etc"), f("etc/os-release", b"ID=test\n")], [f("app", b"x")]])
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("box\n")
    plain = tar_dir(rootfs, workdir / "rootfs.tar")
    for argv, cause in (
            (("export-image", "app", str(archive)), None),
            (("export-image", "app", str(workdir / "app.zst"), "--compression", "zstd"),
             "zstandard"),
            (("import-image", "copy", str(archive)), None),
            (("import-image", "zcopy", str(workdir / "app.zst")), "zstandard"),
            (("import-image", "laid", str(layout)), None),
            (("import-image", "plain", str(plain)), None),
            (("verify-image", "copy", "laid"), None),
            (("new-image", "set", "app", "--config", "Cmd=/bin/app", "--annotation", "a=b"),
             None)):
        modules = imported(state, *argv, status=0)
        # The probe sees what they do import: the test can fail.
        needs = {"verify-image": {"hashlib", "stacko.content"},
                 "new-image": {"hashlib", "json", "stacko.formats.runsettings"}}
        assert needs.get(argv[0], {"tarfile", "hashlib", "json"}) <= modules, argv
        if argv[0] == "import-image":
            # Layers unpack on plain threads (unpacking.py, filewriters.py):
            # concurrent.futures would bring logging, ~7 ms of every import.
            assert "stacko.formats.tarstream" in modules, argv
            assert modules & {"concurrent.futures", "logging", "argparse"} == set(), argv
        check_no_typing(modules, cause, argv)


@pytest.mark.skipif(not available(), reason="docker-registry is needed (tests/install-deps.sh)")
def test_registry_commands_import_no_typing(state: Path, registry: Registry) -> None:
    for argv, cause in (
            (("push-image", "app", f"{registry.host}/app:v1", "--tls-verify=false"), None),
            (("push-image", "app", f"{registry.host}/app:z", "--tls-verify=false",
              "--compression", "zstd"), "zstandard"),
            (("pull-image", "copy", f"{registry.host}/app:v1", "--tls-verify=false"), None),
            (("pull-image", "zcopy", f"docker://{registry.host}/app:z", "--tls-verify=false"),
             "zstandard")):
        modules = imported(state, *argv, status=0)
        assert {"stacko.registry.http1", "hashlib"} <= modules, argv
        # push packs with layerpack's own headers (tarfile's only for the odd
        # entry that needs PAX: none here), deflates on plain threads, and
        # loads neither the unpacker nor argparse; pull unpacks with tarstream,
        # and loads neither tarfile nor the packers
        assert "argparse" not in modules, argv          # the quick parse takes both
        if argv[0] == "push-image":
            assert "stacko.formats.layerpack" in modules, argv
            assert modules & {"tarfile", "concurrent.futures", "logging", "urllib.parse",
                              "stacko.formats.layertar", "stacko.formats.filewriters"} \
                == set(), argv
            if cause is None:     # zstandard imports platform, and with it re
                assert modules & {"json", "re", "enum"} == set(), argv
        else:
            assert "stacko.formats.tarstream" in modules, argv
            assert modules & {"tarfile", "stacko.formats.ociexport", "stacko.formats.layerpack",
                              "stacko.formats.sourcepath", "subwrap"} == set(), argv
            # layers unpack on plain threads (unpacking.py): no logging with them
            assert modules & {"concurrent.futures", "logging"} == set(), argv
        # stacko's own HTTP (http1.py), and no ssl for a registry of plain HTTP
        assert modules & {"http.client", "email", "ssl"} == set(), argv
        check_no_typing(modules, cause, argv)


DEBIAN_POLICY = {"default": [{"type": "insecureAcceptAnything"}],
                 "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}


@pytest.mark.skipif(not available(), reason="docker-registry is needed (tests/install-deps.sh)")
def test_a_policy_that_accepts_anything_loads_no_policy_machinery(
        state: Path, registry: Registry, workdir: Path) -> None:
    """Debian's policy.json accepts any image: pull-image reads it and loads
    nothing of stacko.signing.  Any other policy is loaded and checked."""
    state_ref = f"{registry.host}/app:v1"
    imported(state, "push-image", "app", state_ref, "--tls-verify=false", status=0)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(DEBIAN_POLICY))
    modules = imported(state, "pull-image", "plain", state_ref, "--tls-verify=false",
                       "--policy", str(policy), status=0)
    assert not {m for m in modules if m.startswith("stacko.signing")}
    # The probe can fail: a docker scope, a duplicate key, a reject.
    scoped = dict(DEBIAN_POLICY, transports={"docker": {registry.host: DEBIAN_POLICY["default"]}})
    for n, text in enumerate((json.dumps(scoped),
                              '{"default": [{"type": "reject"}], '
                              '"default": [{"type": "insecureAcceptAnything"}]}',
                              '{"default": [{"type": "reject"}]}')):
        policy.write_text(text)
        modules = imported(state, "pull-image", f"checked{n}", state_ref, "--tls-verify=false",
                           "--policy", str(policy), status=0 if n == 0 else 1)
        assert "stacko.signing.pullsign" in modules, text


# What only packing needs: the tar writer and its compressors, the thread pool
# (concurrent.futures imports logging), the archive importer, `rm -rf` for a
# staging directory.
PACKING = {"tarfile", "concurrent.futures", "logging", "isal", "zstandard", "stacko.oci",
           "stacko.formats.ociexport", "stacko.formats.layerpack", "stacko.staging",
           "subwrap", "subprocess"}


@pytest.mark.skipif(not available(), reason="docker-registry is needed (tests/install-deps.sh)")
def test_a_push_that_packs_nothing_imports_nothing_to_pack_with(state: Path,
                                                                registry: Registry) -> None:
    first = ("push-image", "app", f"{registry.host}/lean/app:1", "--tls-verify=false")
    assert {"isal", "stacko.formats.ociexport"} <= imported(state, *first, status=0)
    # Again, and to another repository (every blob mounted): nothing is packed.
    for ref in ("lean/app:1", "lean/other:1"):
        modules = imported(state, "push-image", "app", f"{registry.host}/{ref}",
                           "--tls-verify=false", status=0)
        assert modules & PACKING == set(), ref
        # nor OpenSSL (hashlib) for the config's digest, nor urllib.parse for the queries
        assert modules & {"hashlib", "_hashlib", "urllib.parse"} == set(), ref


MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
            "mips64": "mips64", "loongarch64": "loongarch64"}


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_host_architecture_without_platform(machine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default ARCH of pull-image and of exported configs, read from
    os.uname() as platform.machine() reads it, named as Go (and so OCI) does."""
    fake = os.uname_result(os.uname()[:4] + (machine,))
    monkeypatch.setattr(ocisource.os, "uname", lambda: fake)
    assert ocisource.host_architecture() == MACHINES[machine]


def test_host_architecture_is_platforms() -> None:
    import platform
    assert ocisource.host_architecture() == MACHINES.get(platform.machine(), platform.machine())


# The commands run most often parse their line without argparse (cli.quick_args)
# and read the metadata without json: together with re and enum, which both
# import, and signal's enums, these are ~10 ms of a start of ~20 (docs/startup.md).
LEAN = NO_MOUNT | {"argparse", "re", "json", "enum", "signal", "gettext", "locale", "shlex",
                   "stacko.run", "stacko.procs", "collections.abc"}


@pytest.mark.parametrize("argv, needs", [
    (("list-images",), set()), (("list-images", "--tree"), set()),
    (("list-images", "--json"), {"json", "re", "enum"}),      # json writes it
    (("list-stackpoints",), set()), (("list-stackpoints", "--json"), {"json", "re", "enum"}),
    (("get-stackpoint-dir", "web"), set()), (("is-stackpoint-mounted", "web"), set()),
    (("-v", "get-stackpoint-dir", "web"), set()),     # -v sets stacko.log's flag: no run, no shlex
])
def test_the_hot_commands_start_lean(state: Path, argv: tuple[str, ...], needs: set[str]) -> None:
    assert imported(state, *argv) & LEAN == needs


@pytest.mark.mounts
def test_mount_and_umount_start_lean(state: Path) -> None:
    # Nothing but the system calls, through the new mount API or mount(2) alike.
    lean = {"argparse", "json", "gettext", "locale", "signal", "re", "enum", "shlex",
            "collections.abc", "ctypes", "collections", "functools", "contextlib", "subprocess"}
    for argv in (("mount-stackpoint", "web"), ("umount-stackpoint", "web")):
        assert imported(state, *argv) & lean == set(), argv


def test_the_probe_sees_argparse(state: Path) -> None:
    """The tests above can fail: a line the quick parse declines uses argparse."""
    assert {"argparse", "re"} <= imported(state, "list-images", "--js")


# update-stackpoint's look that finds nothing new (issue 22's goal: twice
# get-stackpoint-dir plus one round trip) imports what the look and the check's
# record need: stacko's own HTTP and json; not the archive reader (tarfile,
# ocisource), not OpenSSL (ssl, hashlib: lean.sha256), not http.client and
# its email parser, not urllib.parse, not argparse (the quick parse takes it),
# not threading (a name's bounded lookup runs on _thread: lean.lookup).
UPDATE_DENIED = {"tarfile", "stacko.formats.ocisource", "stacko.registry.pull", "ssl",
                 "hashlib", "_hashlib", "http.client", "email", "urllib.parse", "argparse",
                 "threading"}


@pytest.mark.mounts
@pytest.mark.skipif(not available(), reason="docker-registry is needed (tests/install-deps.sh)")
def test_an_update_that_finds_nothing_new_imports_only_the_look(
        stacko: Runner, state: Path, registry: Registry, workdir: Path) -> None:
    from registryd import skopeo_push
    layout = workdir / "layout"
    write_layout(layout, [[d("srv"), f("srv/version", b"v1")]], ref="v1")
    skopeo_push(registry, f"oci:{layout}:v1", "fleet/web:stable")
    ref = f"{registry.host}/fleet/web:stable"
    stacko("update-stackpoint", "web", ref, "--tls-verify=false")      # pulls, cuts over
    for more in ((), ("--dry-run",), ("--tls-verify=false", "-v")):
        argv = ("update-stackpoint", "web", ref, "--tls-verify=false", *more)
        modules = imported(state, *argv, status=0)
        assert {"stacko.update", "stacko.registry.http1"} <= modules, argv
        assert modules & (UPDATE_DENIED | HEAVY - {"subprocess"}) == set(), argv
