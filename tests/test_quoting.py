"""Names and paths in messages, quoted as `ls --quoting-style=shell-escape`
quotes them (stacko.quoting), and the messages of a mistyped, swapped or
unprivileged import-image (issue 23)."""
from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import Runner, run_stacko, snapshot
from stacko.quoting import quote, quoted

NAMES = ["abc", "a b", "a'b", "a\nb", "a\n", "\nb", "a\n\nb", "a$b", 'a"b', "a*", "é", "-x",
         "~x", "x~", "#a", "a#", "a=b", "a:b", "a,b", "a@b", "%a", "a\\b", "a'b c", "a'b\nc",
         "{", "}", "{a}", "a]", "[a", "a?", "a!", "a&b", "a;b", "a<b", "a|b", "a^b", "a`b",
         "a(b", "\x1b[31m", "a\tb", "a\x7fb", "it's", "'", "''", "a'b*", "x\udcff", "日本",
         "a\u200bb", " ", "a\x01b\x02"]


@pytest.mark.skipif(shutil.which("ls") is None, reason="no ls")
def test_quote_is_what_ls_shows(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).touch()
    wrong = []
    for name in NAMES:
        shown = subprocess.run(["ls", "-d", "--quoting-style=shell-escape", "--",
                                os.fsencode(name)], cwd=tmp_path, capture_output=True,
                               env={"LC_ALL": "C.UTF-8"}, check=True).stdout.rstrip(b"\n")
        if quote(name).encode("utf-8", "surrogateescape") != shown:
            wrong.append((name, shown, quote(name)))
    assert not wrong


@pytest.mark.parametrize("name", NAMES)
def test_the_shell_reads_back_what_quote_wrote(name: str) -> None:
    if "\udcff" in name:
        pytest.skip("not UTF-8: printf would write the byte, echo cannot compare it")
    out = subprocess.run(["bash", "-c", f"printf %s {quote(name)}"], capture_output=True,
                         check=True).stdout
    assert out == name.encode()


def test_quoted_names_stand_out_in_a_sentence() -> None:
    assert quoted("web") == "'web'" and quoted("a b") == "'a b'"
    assert quoted("a\nb") == "'a'$'\\n''b'" and quoted("") == "''"


def test_an_invalid_name_is_shown_as_the_shell_reads_it(stacko: Runner, root: Path) -> None:
    r = stacko("new-image", "a\nb", rc=2)
    assert "'a'$'\\n''b'" in r.stderr
    assert "a\nb" not in r.stderr


def hostile_tar(path: Path, member: str) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))


def test_an_archive_member_with_a_newline_is_quoted(stacko: Runner, root: Path,
                                                    workdir: Path) -> None:
    archive = workdir / "bad.tar"
    hostile_tar(archive, "../etc/evil\nname")
    stacko("new-image", "base")
    before = snapshot(root)
    r = stacko("import-image", "evil", str(archive), rc=1)
    assert "archive member '../etc/evil'$'\\n''name' climbs out" in r.stderr
    assert "evil\nname" not in r.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize("path, rc", [("./build/apps-1.1", 2), ("rootfs.tar", 1), ("-", 2)])
def test_import_with_path_first(stacko: Runner, root: Path, workdir: Path, path: str,
                                rc: int, monkeypatch) -> None:
    # A path is no image name (exit 2, as for any invalid name); a word may be
    # one, and then the PATH it names is missing (exit 1): both say the order.
    monkeypatch.chdir(workdir)
    if path != "-":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch() if path.endswith(".tar") else Path(path).mkdir()
    r = stacko("import-image", path, "apps-1.1", rc=rc)
    assert r.stdout == ""
    assert ("stacko: error: invalid image name" if rc == 2 else
            "stacko: error: cannot read apps-1.1: there is no such file") in r.stderr
    assert f"the order is NAME PATH, `stacko import-image apps-1.1 {quote(path)}`" in r.stderr
    assert not (root / "images.json").exists() or "apps-1.1" not in \
        (root / "images.json").read_text()


def test_an_invalid_import_name_gets_no_order_hint(stacko: Runner, root: Path) -> None:
    r = stacko("import-image", "no/such", "apps", rc=2)
    assert "invalid image name 'no/such'" in r.stderr and "order" not in r.stderr


def python_for(uid: int) -> str:
    from test_cli import python_for as find
    return find(uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_normal_users_import_names_the_file_and_says_why(monkeypatch) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    monkeypatch.setattr(sys, "executable", python_for(nobody))
    base = tempfile.mkdtemp(prefix="stacko-nonroot-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        src = Path(base, "src")
        (src / "etc").mkdir(parents=True)
        (src / "etc" / "motd\nof the day").write_text("root's")    # owned by root
        os.chown(base, nobody, -1)
        # subwrap, which stacko runs its commands with, where that user can import it
        import subwrap
        (Path(base) / "py").mkdir()
        shutil.copy(subwrap.__file__, Path(base) / "py")
        repo = Path(__file__).resolve().parent.parent
        root = os.path.join(base, "root")
        r = run_stacko(root, "import-image", "mine", str(src), rc=1, user=nobody,
                       env={"PYTHONPATH": f"{repo}:{base}/py"})
        assert f"{src}/etc/motd'$'\\n''of the day'" in r.stderr.replace(f"'{src}", str(src))
        assert "motd\nof" not in r.stderr
        assert "stacko: hint:" in r.stderr and "run the command as root" in r.stderr
    finally:
        shutil.rmtree(base)


def test_a_stackpoint_path_is_quoted(stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    bad = workdir / "a\nfile"
    bad.write_text("")
    r = stacko("new-stackpoint", "p", "base", "--path", str(bad), rc=2)
    assert f"stacko: error: {quote(str(bad))} is not a directory\n" in r.stderr
    r = stacko("new-stackpoint", "p", "base", "--path", str(root / "in\nside"), rc=2)
    inside = str(root / "in\nside")
    assert f"{quote(inside)} is inside the state root" in r.stderr
