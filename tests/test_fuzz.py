"""Hostile input: random argument vectors, random and hostile layer archives,
and 16 processes at once on one root.

* Random argv (hypothesis, fixed seed): never a traceback, always exit 0, 1 or
  2.  Run in-process for speed (an exception other than the ones main() turns
  into an exit status fails the test), then a sample through the real CLI.
* Random layer tars (hypothesis): unpacking either succeeds or is refused with
  a StackoError, and never writes outside the layer.
* Hostile archives that tests/test_oci.py does not cover, through import-image.
* Concurrency: 16 processes of mixed commands, then `check` is clean and every
  command that succeeded left its effect.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Runner, _mounts_under, run_stacko, snapshot
from ocigen import d, f, fifo, hard, layer_tar, sym

IS_ROOT = os.geteuid() == 0
REPO = str(Path(__file__).resolve().parent.parent)
EXAMPLES = int(os.environ.get("STACKO_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def cli(root: Path, argv: List[str], stdin: bytes = b"") -> Tuple[int, str, str]:
    """main() in-process, stdin given, stdout and stderr captured."""
    from stacko.cli import main
    out, err = io.StringIO(), io.StringIO()
    fake_in = io.TextIOWrapper(io.BytesIO(stdin))
    old_in = sys.stdin
    sys.stdin = fake_in
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["--root", str(root), *argv])
    finally:
        sys.stdin = old_in
    return status, out.getvalue(), err.getvalue()


# --- random argument vectors ------------------------------------------------------------
def command_words() -> List[str]:
    from stacko.cli import COMMANDS
    return sorted({c.name for c in COMMANDS} | {a for c in COMMANDS for a in c.aliases})


NAMES = ["base", "app", "sp", "new", "a" * 128, "a" * 129, "..", ".", "a/b", "-x", "", " ",
         "ünï", "a b", "a\tb", "a\nb", "name\udcff", "--", "-", "0", "x" * 4000]
OPTIONS = ["--json", "--tree", "--read-only", "--lazy", "--repair", "--keep", "--ref",
           "--compression", "--path", "-v", "--verbose", "--root", "--bogus", "-h", "--help",
           "--version", "gzip", "zstd", "none", "2", "-1", "99999999999999999999999"]


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "safe").mkdir()
    return base


def safe_word(base: Path) -> st.SearchStrategy[str]:
    """Any word, but paths only inside base: --root, --path and export PATH may
    name anything, and a random one must not write outside the test."""
    text = st.text(alphabet=st.characters(blacklist_characters="\x00",
                                          blacklist_categories=("Cs",)), max_size=40)
    paths = st.sampled_from([str(base / "safe" / "x"), str(base / "safe" / "d i r"),
                             str(base / "safe" / "out.tar"), "-", str(base / "missing"),
                             str(base / "safe")])
    return st.one_of(st.sampled_from(command_words()), st.sampled_from(NAMES),
                     st.sampled_from(OPTIONS), text.filter(lambda w: not w.startswith("/")),
                     paths)


def sanitize(argv: List[str], base: Path) -> List[str]:
    """A word after --root or --path, and absolute words, must stay in base."""
    out = []
    for word in argv:
        if word.startswith("/") and not word.startswith(str(base)):
            word = str(base / "safe" / "elsewhere")
        out.append(word)
    for n, word in enumerate(out[:-1]):
        if word.startswith("--root") or word.startswith("--path") or word.startswith("--pa") \
                or word.startswith("--ro"):
            out[n + 1] = str(base / "safe" / "opt")
    return [w for w in out if not (w.startswith(("--root=", "--path=", "--ro=", "--pa=")))]


@pytest.mark.mounts
def test_random_argv_never_crashes(fuzz_root: Path) -> None:
    root = fuzz_root / "root"
    for argv in (["new-image", "base"], ["new-image", "app", "base"],
                 ["new-stackpoint", "sp", "app"]):
        assert cli(root, argv)[0] == 0
    tried: List[List[str]] = []

    @FUZZ
    @given(st.lists(safe_word(fuzz_root), min_size=0, max_size=6))
    def one(words: List[str]) -> None:
        argv = sanitize(words, fuzz_root)
        tried.append(argv)
        status, out, err = cli(root, argv)
        assert status in (0, 1, 2), (argv, status, err)
        assert "Traceback" not in err, (argv, err)
        if status == 1 and not (argv and "is-stackpoint-mounted" in argv):
            assert "stacko: error:" in err, (argv, err)

    one()
    print(f"\nrandom argv: {len(tried)} vectors")
    # A sample through the real command line: exit status and no traceback.
    rng = random.Random(7)
    for argv in rng.sample(tried, min(25, len(tried))):
        r = run_stacko(root, *argv, rc=None)
        assert r.returncode in (0, 1, 2), (argv, r.stderr)
    for mp in reversed(_mounts_under(str(fuzz_root))):
        subprocess.run(["umount", "-l", mp], capture_output=True)


# --- random layer tars --------------------------------------------------------------------
SEGMENTS = ["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh...", ".wh..", "c d",
            "\u00e9", "x" * 300]
TARGETS = ["a", "../a", "/etc", "/", "..", "a/b", "../../outside", "b/../..", "sentinel"]


def member_strategy() -> st.SearchStrategy[tarfile.TarInfo]:
    name = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join)
    name = st.one_of(name, name.map(lambda n: "/" + n), name.map(lambda n: "./" + n))

    def build(kind: bytes, member: str, target: str, mode: int, big: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(member)
        info.type, info.mode = kind, mode
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = target
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3          # /dev/null: harmless if opened
        if big == 1:
            info.pax_headers["uid"] = str(2 ** 40)
        elif big == 2:
            info.pax_headers["mtime"] = "1" + "0" * 30
        elif big == 3:
            info.pax_headers["SCHILY.xattr.user.x" + "y" * 300] = "v"
        return info
    kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                             tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
    return st.builds(build, kinds, name, st.sampled_from(TARGETS),
                     st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o7777]),
                     st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 3]))


def tar_of(members: List[tarfile.TarInfo]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            if info.isreg():
                info.size = 5
                tar.addfile(info, io.BytesIO(b"x" * 5))
            else:
                tar.addfile(info)
    return out.getvalue()


def outside_state(base: Path) -> Dict[str, Tuple[int, int, bytes]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath).is_relative_to(base / "layer"):
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_relative_to(base / "layer"):
                continue
            st_ = os.lstat(p)
            found[str(p)] = (st_.st_mode, st_.st_nlink,
                             p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    return found


@pytest.mark.skipif(not IS_ROOT, reason="unpacking whiteouts and devices needs root")
def test_random_layers_never_escape(tmp_path: Path) -> None:
    from stacko.errors import StackoError
    from stacko.formats.layertar import unpack_layer
    base = tmp_path
    (base / "sentinel").write_text("outside")
    (base / "a").mkdir()
    (base / "a" / "b").write_text("outside too")
    before = outside_state(base)
    counts = {"unpacked": 0, "refused": 0}

    @FUZZ
    @given(st.lists(member_strategy(), min_size=1, max_size=8))
    def one(members: List[tarfile.TarInfo]) -> None:
        try:
            data = tar_of(members)
        except (ValueError, tarfile.TarError, UnicodeError):
            return        # tarfile itself will not write it
        layer = base / "layer"
        subprocess.run(["rm", "-rf", str(layer)], check=True)
        layer.mkdir()
        try:
            unpack_layer(io.BytesIO(data), str(layer), [])
            counts["unpacked"] += 1
        except StackoError:
            counts["refused"] += 1
        assert outside_state(base) == before, [m.name for m in members]

    one()
    print(f"\nrandom layers: {counts}")


# --- hostile archives through import-image ---------------------------------------------------
def pax_member(name: str, data: bytes = b"x", **headers: str):
    info, body = f(name, data)
    info.pax_headers.update(headers)
    return info, body


HOSTILE = {
    # a device node where a file was, then the file: the file replaces the node
    "device-then-file": ([(lambda: _dev("etc/passwd")), f("etc/passwd", b"mine")], "ok"),
    "fifo-then-file": ([fifo("etc/pipe"), f("etc/pipe", b"mine")], "ok"),
    "symlink-then-file": ([sym("etc/passwd", "/etc/passwd"), f("etc/passwd", b"mine")], "ok"),
    # a path named again: the later member takes its place, whatever either is
    "file-then-file": ([f("etc/passwd", b"theirs"), f("etc/passwd", b"mine")], "ok"),
    "dir-then-file": ([d("etc/passwd"), f("etc/passwd/x"), f("etc/passwd", b"mine")], "ok"),
    "file-then-dir": ([f("x"), d("x"), f("x/y")], "ok"),
    "file-then-symlink": ([f("a"), sym("a", "/etc/passwd")], "ok"),
    "hardlink-to-itself": ([f("a"), hard("a", "a")], "refused"),
    "whiteout-of-dotdot": ([d("a"), f("a/.wh...")], "refused"),
    "whiteout-of-dot": ([f(".wh..")], "refused"),
    "nul-in-pax-path": ([pax_member("a", path="a\x00/../../evil")], "refused"),
    "nul-in-linkpath": ([(lambda: _sym_pax("s", "a\x00b"))], "refused"),
    "huge-uid": ([pax_member("a", uid=str(2 ** 70))], "refused"),
    "huge-mtime": ([pax_member("a", mtime="1" + "0" * 40)], "refused"),
    "negative-mtime": ([pax_member("a", mtime="-1" + "0" * 40)], "refused"),
    "long-name": ([f("d/" + "n" * 5000, b"x")], "refused"),
    "deep-name": ([f("/".join(["d"] * 3000) + "/f", b"x")], "either"),
    "hardlink-to-lower-only": ([hard("evil", "etc/os")], "refused"),
}


def _dev(name: str):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.devmajor, info.devminor = tarfile.BLKTYPE, 0o600, 7, 0
    return info, b""


def _sym_pax(name: str, target: str):
    info, body = sym(name, "placeholder")
    info.pax_headers["linkpath"] = target
    return info, body


def huge_header_tar(path: Path) -> Path:
    """A PAX header that claims 8 GiB: a truncated archive, not an 8 GiB read."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 8 << 30
    raw = header.tobuf(format=tarfile.GNU_FORMAT)
    path.write_bytes(raw + b"30 path=" + b"a" * 100 + b"\n")
    return path


@pytest.mark.mounts
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive(case: str, stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    directory = Path(stacko("edit-image", "base").out)
    (directory / "etc").mkdir()
    (directory / "etc" / "os").write_text("base")
    stacko("close-image", "base")
    members, expected = HOSTILE[case]
    members = [m() if callable(m) else m for m in members]
    try:
        tar = layer_tar(members)
    except (ValueError, tarfile.TarError) as e:
        pytest.skip(f"tarfile will not write it: {e}")
    archive = workdir / "layer.tar"
    archive.write_bytes(tar)
    before = snapshot(root)
    r = stacko("import-image", "evil", str(archive), "base", rc=None)
    assert r.returncode in (0, 1), r.stderr
    if expected == "refused" or (expected == "either" and r.returncode == 1):
        assert r.returncode == 1 and "stacko: error:" in r.stderr, r.stderr
        assert snapshot(root) == before
        assert os.listdir(root / "tmp") == []
    else:
        assert r.returncode == 0, r.stderr
    if case.endswith("-then-file") and r.returncode == 0:
        stacko("new-stackpoint", "look", "evil")
        seen = Path(stacko("mount-stackpoint", "look").out) / "etc" / ("pipe" if "fifo" in case
                                                                       else "passwd")
        assert seen.is_file() and not seen.is_symlink() and seen.read_bytes() == b"mine"
    assert Path("/etc/passwd").read_bytes() != b"mine"
    assert stacko("check", rc=None).stdout == ""


@pytest.mark.mounts
def test_huge_pax_header(stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    before = snapshot(root)
    r = stacko("import-image", "evil", str(huge_header_tar(workdir / "huge.tar")), rc=1)
    assert "stacko: error:" in r.stderr
    assert snapshot(root) == before


# --- 16 processes at once ------------------------------------------------------------------------
def worker_script(n: int) -> List[List[str]]:
    """The commands of worker n: its own images and stackpoint, and some shared ones."""
    own = f"w{n}"
    cmds = [["new-image", own, "base"], ["edit-image", own], ["close-image", own],
            ["new-stackpoint", f"sp{n}", own], ["mount-stackpoint", f"sp{n}"],
            ["new-image", f"{own}b", "base"], ["cutover-stackpoint", f"sp{n}", f"{own}b"],
            ["list-images", "--json"], ["fallback-stackpoint", f"sp{n}"],
            ["list-stackpoints", "--json"], ["new-image", "shared", "base"],
            ["umount-stackpoint", f"sp{n}"], ["new-image", f"{own}c"],
            ["delete-image", f"{own}c"], ["check"]]
    if n % 4 == 0:
        cmds += [["delete-stackpoint", f"sp{n}"], ["delete-image", f"{own}b"]]
    return cmds


@pytest.mark.mounts
def test_sixteen_processes_at_once(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    script = """
import json, subprocess, sys
root, n, cmds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = []
for argv in cmds:
    p = subprocess.run([sys.executable, "-m", "stacko", "--root", root] + argv,
                       capture_output=True, text=True)
    results.append([argv, p.returncode, "Traceback" in p.stderr, p.stderr[-300:]])
print(json.dumps(results))
"""
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(n),
                               json.dumps(worker_script(n))],
                              stdout=subprocess.PIPE, env=env, text=True) for n in range(16)]
    results = {n: json.loads(p.communicate(timeout=600)[0]) for n, p in enumerate(procs)}
    shared_ok = 0
    for n, rows in results.items():
        for argv, status, traceback, err in rows:
            assert not traceback, (argv, err)
            if argv == ["new-image", "shared", "base"]:
                assert status in (0, 1)
                shared_ok += status == 0
            elif argv[0] == "check":
                assert status in (0, 1)    # another worker may be mid-command
            else:
                assert status == 0, (n, argv, err)
    assert shared_ok == 1           # exactly one worker created it
    assert stacko("check").stdout == ""
    listed = set(stacko("list-images").stdout.split())
    points = {p["name"]: p for p in json.loads(stacko("list-stackpoints", "--json").stdout)}
    for n in range(16):
        assert f"w{n}" in listed and f"w{n}c" not in listed
        if n % 4 == 0:
            assert f"sp{n}" not in points and f"w{n}b" not in listed
        else:
            assert f"w{n}b" in listed
            assert points[f"sp{n}"]["current"] == f"w{n}"
            assert points[f"sp{n}"]["mounted"] is False
