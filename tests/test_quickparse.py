"""The quick parse of the hot commands (cli.quick_args) agrees with argparse.

A line it takes must give exactly the attributes argparse's parse gives, and
argparse must accept that line; every line it declines goes to argparse, which
alone reports usage errors.  So the property checked is: whenever quick_args
returns something, it is what argparse returns.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from conftest import EXIT_PROBE
from stacko import cli


def argparse_args(argv: list[str]) -> dict[str, object] | None:
    """What argparse makes of argv, or None when it refuses the line."""
    try:
        return vars(cli.build_parser(cli.wanted_command(argv)).parse_args(argv))
    except SystemExit:
        return None


def agrees(argv: list[str]) -> bool:
    """Whether quick_args declines argv or parses it as argparse does."""
    quick = cli.quick_args(argv)
    if quick is None:
        return True
    return vars(quick) == argparse_args(argv)


TAKEN = [
    ["get-stackpoint-dir", "web"],
    ["--root", "/r", "get-stackpoint-dir", "web"],
    ["--root=/r", "is-stackpoint-mounted", "web"],
    ["is-stackpoint-mounted", "web", "--root", "/r dir"],
    ["-v", "mount-stackpoint", "a.b_c+d-1"],
    ["umount-stackpoint", "web", "--lazy"],
    ["umount-stackpoint", "--lazy", "web", "--verbose"],
    ["list-images"], ["list-images", "--tree"], ["list-images", "--json", "--tree"],
    ["list-images", "--json", "--json"], ["--root", "", "list-stackpoints"],
    ["list-stackpoints", "--json"], ["get-stackpoint-dir", "list-images"],
    ["get-stackpoint-dir", "x" * 128], ["df"], ["--root", "/r", "df", "--json"],
    ["update-stackpoint", "web", "reg.example/fleet/web:stable"],
    ["update-stackpoint", "web", "127.0.0.1:5000/a:b", "--tls-verify=false"],
    ["--root", "/r", "update-stackpoint", "--tls-verify=true", "web", "docker://h:1/a",
     "--dry-run", "-v"],
    ["update-stackpoint", "web", "h.example/a@sha256:" + "a" * 64, "--keep", "2",
     "--check", "/etc/stacko/update/web.check", "--check-timeout", "30", "--tries=3"],
    ["update-stackpoint", "web", "--keep=1", "h.example/a", "--platform", "linux/arm64",
     "--policy=/p.json", "--registries.d", "/d", "--cert-dir=/c", "--authfile", "/a.json",
     "--creds", "ci", "--password-stdin", "--password-file=", "--keep", "3"],
    ["update-stackpoint", "web", "localhost:5000/a", "--check=sh -c 'x --y'", "--creds=u:-p", "--check-timeout=0.5"],
    ["pull-image", "app", "127.0.0.1:5000/app:v1", "--tls-verify=false"],
    ["-v", "pull-image", "app", "docker://reg.example/a/b@sha256:" + "b" * 64, "--platform",
     "linux/arm64", "--policy=/p.json", "--registries.d", "/d", "--cert-dir=/c",
     "--authfile", "/a.json", "--creds", "ci", "--password-stdin"],
    ["push-image", "app", "127.0.0.1:5000/app:v1", "--tls-verify=false"],
    ["push-image", "app", "h.example/a:1", "--compression", "zstd", "--sign-by", "ABCD",
     "--sign-passphrase-file=/p", "--registries.d", "/d", "--sign-identity", "h.example/b:2"],
    ["-v", "push-image", "--compression=none", "app", "docker://h:1/a",
     "--sign-by-sigstore-private-key", "/k.private", "--creds=u", "--password-stdin"],
    ["import-image", "app", "/tmp/app.tar"], ["--root", "/r", "import-image", "app", "dir", "base"],
    ["import-image", "app", "layout", "--ref", "v1"], ["-v", "import-image", "--ref=v1", "a", "b", "c"],
    ["import-image", "app", "", "base", "-v"], ["import-image", "app", "app.tar", "--ref", "base"],
]

DECLINED = [
    [], ["--version"], ["-h"], ["list-images", "-h"], ["list-images", "--help"],
    ["list-images", "--js"],                      # an abbreviation: argparse's to judge
    ["get-stackpoint-dir"], ["get-stackpoint-dir", "a", "b"],
    ["get-stackpoint-dir", "bad name"], ["get-stackpoint-dir", "x" * 129],
    ["get-stackpoint-dir", "-web"], ["get-stackpoint-dir", "--", "web"],
    ["get-stackpoint-dir", "wéb"], ["get-stackpoint-dir", "web\n"],
    ["--root", "get-stackpoint-dir", "web"][:2], ["--root", "-x", "list-images"],
    ["--root", "/a", "--root", "/b", "list-images"], ["--ro", "/r", "list-images"],
    ["list-images", "--lazy"], ["umount-stackpoint", "web", "--tree"],
    ["new-image", "web"], ["cutover-stackpoint", "web", "img"], ["web", "get-stackpoint-dir"],
    ["list-images", "extra"], ["-vv", "list-images"], ["df", "--tree"], ["df", "web"],
    ["update-stackpoint", "web"], ["update-stackpoint", "web", "debian:12"],
    ["update-stackpoint", "bad name", "h.example/a"], ["update-stackpoint", "web", "h.example/a", "h.example/b"],
    ["update-stackpoint", "web", "h.example/a", "--tls-verify"],           # argparse's: optional value
    ["update-stackpoint", "web", "h.example/a", "--tls-verify", "false"],
    ["update-stackpoint", "web", "h.example/a", "--tls-verify=maybe"],
    ["update-stackpoint", "web", "h.example/a", "--keep", "-1"], ["update-stackpoint", "web", "h.example/a", "--keep=x"],
    ["update-stackpoint", "web", "h.example/a", "--keep"], ["update-stackpoint", "web", "h.example/a", "--check"],
    ["update-stackpoint", "web", "h.example/a", "--check", "--dry-run"],
    ["update-stackpoint", "web", "h.example/a", "--check-timeout", "0"], ["update-stackpoint", "web", "h.example/a", "--dry"],
    ["update-stackpoint", "web", "--", "h.example/a"], ["update-stackpoint", "web", "h.example/a", "--keep", "2", "-h"],
    ["update-stackpoint", "web", "h.example/a", "--platform", "-x"], ["update-stackpoint", "-web", "h.example/a"],
    ["push-image", "app", "h.example/a", "--compression", "xz"],       # not a choice
    ["push-image", "app", "h.example/a", "--compression=GZIP"], ["push-image", "app", "h.example/a", "--compression="],
    ["push-image", "app", "h.example/a", "--compression"], ["push-image", "app", "h.example/a", "--comp", "zstd"],
    ["push-image", "app", "h.example/a", "--sign-by", "--compression=zstd"], ["push-image", "app", "h.example/a", "--sign"],
    ["push-image", "app", "h.example/a", "--platform", "linux/arm64"],  # pull's, not push's
    ["push-image", "app"], ["push-image", "bad name", "h.example/a"],
    ["import-image", "app"], ["import-image", "app", "-"], ["import-image", "a", "b", "c", "d"],
    ["import-image", "a", "--ref", "v1", "b"],          # argparse's: positionals in two runs
    ["import-image", "a", "b", "-v", "c"], ["import-image", "a", "b", "bad name"],
    ["import-image", "a", "b", "--parent", "c"], ["import-image", "a", "b", "--ref"],
]


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_plain_lines_are_taken_and_parsed_as_argparse_does(argv: list[str]) -> None:
    quick = cli.quick_args(argv)
    assert quick is not None, "the quick parse must take this plain line"
    assert vars(quick) == argparse_args(argv)


@pytest.mark.parametrize("argv", DECLINED, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert cli.quick_args(argv) is None


def test_argparse_still_reports_what_the_quick_parse_declines(capsys) -> None:
    assert cli.main(["get-stackpoint-dir", "bad name"]) == 2
    assert "invalid name 'bad name'" in capsys.readouterr().err
    assert cli.main(["list-images", "--lazy"]) == 2
    assert "unrecognized arguments: --lazy" in capsys.readouterr().err


def test_version_says_what_argparse_says(capsys) -> None:
    assert cli.main(["--version"]) == 0
    quick = capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == quick


# The vocabulary of the generated lines: the quick parse's own (from the command
# table), and words just beside it.
QUICK_FLAGS = sorted({flag for _, flags, options in cli.QUICK.values()
                      for flag in flags + tuple(options)})
WORDS = st.sampled_from(
    list(cli.QUICK) + QUICK_FLAGS + [flag[:-1] for flag in QUICK_FLAGS]
    + [flag + "=" for flag in QUICK_FLAGS] + [flag + "=2" for flag in QUICK_FLAGS]
    + ["new-image", "cutover-stackpoint", "edit-image", "--read-only", "--root", "--root=/x",
       "--root=", "-v", "--verbose", "-h", "--", "-", "--roo", "web", "a.b", "0", "", " ",
       "a b", "-1", "/r", "x" * 129, "é", "h/a", "h.example/a", "127.0.0.1:5000/a:b", "debian:12",
       "--tls-verify=false", "--tls-verify=no", "false", "2", "0.5", "--keep=-1", "linux/arm64"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(WORDS, max_size=6))
def test_any_line_the_quick_parse_takes_argparse_parses_the_same(argv: list[str]) -> None:
    assert agrees(argv)


# update-stackpoint's options take values: lines of its own words, with values
# that are good, bad, missing, or flags in their place.
UPDATE_OPTIONS = sorted(cli.QUICK["update-stackpoint"][2]) + ["--dry-run", "--password-stdin"]
UPDATE_WORDS = st.sampled_from(
    UPDATE_OPTIONS + [o + "=" for o in UPDATE_OPTIONS] + [o + "=2" for o in UPDATE_OPTIONS]
    + [o[:-1] for o in UPDATE_OPTIONS]
    + ["web", "h.example/a", "127.0.0.1:5000/a:b", "debian:12", "2", "-1", "0", "1e3", "false",
       "true", "--tls-verify=false", "--tls-verify=yes", "--", "-v", "--root", "/r", "-h", "",
       "a=b", "--check=--dry-run", "linux/arm64"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(UPDATE_WORDS, max_size=7))
def test_any_update_line_the_quick_parse_takes_argparse_parses_the_same(words: list[str]) -> None:
    assert agrees(["update-stackpoint", *words])


# pull-image's lines (issue 21: argparse was ~10 % of a pull of an update).
PULL_OPTIONS = sorted(cli.QUICK["pull-image"][2]) + ["--password-stdin"]
PULL_WORDS = st.sampled_from(
    PULL_OPTIONS + [o + "=" for o in PULL_OPTIONS] + [o + "=2" for o in PULL_OPTIONS]
    + [o[:-1] for o in PULL_OPTIONS]
    + ["app", "h.example/a", "127.0.0.1:5000/a:b", "debian:12", "2", "false", "true",
       "--tls-verify=false", "--tls-verify=yes", "--", "-v", "--root", "/r", "-h", "",
       "linux/arm64", "--keep", "--dry-run"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(PULL_WORDS, max_size=7))
def test_any_pull_line_the_quick_parse_takes_argparse_parses_the_same(words: list[str]) -> None:
    assert agrees(["pull-image", *words])


# push-image's lines (issue 21: argparse was ~12 ms of every push), with
# --compression's choices, right, wrong and abbreviated.
PUSH_OPTIONS = sorted(cli.QUICK["push-image"][2]) + ["--password-stdin"]
PUSH_WORDS = st.sampled_from(
    PUSH_OPTIONS + [o + "=" for o in PUSH_OPTIONS] + [o + "=2" for o in PUSH_OPTIONS]
    + [o[:-1] for o in PUSH_OPTIONS]
    + ["app", "h.example/a", "127.0.0.1:5000/a:b", "debian:12", "gzip", "zstd", "none", "xz",
       "Gzip", "--compression=zstd", "--compression=none", "--compression=gz", "false",
       "--tls-verify=false", "--", "-v", "--root", "/r", "-h", "", "ABCD", "--platform"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(PUSH_WORDS, max_size=7))
def test_any_push_line_the_quick_parse_takes_argparse_parses_the_same(words: list[str]) -> None:
    assert agrees(["push-image", *words])


# import-image's lines (issue 21: argparse was ~12 ms of an import): an optional
# PARENT, which argparse fills only in the run of words of the other positionals.
IMPORT_WORDS = st.sampled_from(
    ["--ref", "--ref=", "--ref=v1", "--re", "--parent", "app", "base", "layout", "/tmp/a.tar",
     "bad name", "", "-", "--", "-v", "--root", "/r", "-h", "v1", "x" * 129, "-1"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(IMPORT_WORDS, max_size=7))
def test_any_import_line_the_quick_parse_takes_argparse_parses_the_same(words: list[str]) -> None:
    assert agrees(["import-image", *words])


def test_a_positional_after_an_optional_one_is_refused() -> None:
    command = cli.Command("x", cli.cmd_df, "help", cli.PARENT, cli.POINT, quick=True)
    with pytest.raises(ValueError, match="the quick parse cannot take point"):
        cli.quick_grammar(command)


def test_the_quick_grammar_is_the_command_tables() -> None:
    plain = {command: (tuple(dest for dest, _ in positional), flags, sorted(options))
             for command, (positional, flags, options) in cli.QUICK.items()}
    assert plain == {
        "get-stackpoint-dir": (("point",), (), []), "is-stackpoint-mounted": (("point",), (), []),
        "mount-stackpoint": (("point",), (), []),
        "umount-stackpoint": (("point",), ("--lazy",), []),
        "list-stackpoints": ((), ("--json",), []), "list-images": ((), ("--tree", "--json"), []),
        "df": ((), ("--json",), []),
        "update-stackpoint": (("point", "ref"), ("--password-stdin", "--dry-run"), [
            "--authfile", "--cert-dir", "--check", "--check-timeout", "--creds", "--keep",
            "--password-file", "--platform", "--policy", "--registries.d", "--tls-verify",
            "--tries"]),
        "pull-image": (("name", "ref"), ("--password-stdin",), [
            "--authfile", "--cert-dir", "--creds", "--password-file", "--platform", "--policy",
            "--registries.d", "--tls-verify"]),
        "push-image": (("name", "ref"), ("--password-stdin",), [
            "--authfile", "--cert-dir", "--compression", "--creds", "--password-file",
            "--registries.d", "--sign-by", "--sign-by-sigstore-private-key", "--sign-identity",
            "--sign-passphrase-file", "--tls-verify"]),
        "import-image": (("name", "path", "parent"), (), ["--ref"])}
    assert cli.QUICK["update-stackpoint"][2]["--tls-verify"] == ("tls_verify", cli.boolean,
                                                                 True, True)
    for command in cli.COMMANDS:
        assert (command.name in cli.QUICK) == command.quick


@pytest.mark.parametrize("argument", [
    cli.arg("path", metavar="PATH", nargs="?"), cli.arg("--tries", type=int),
    cli.arg("names", type=cli.name, nargs="+"), cli.arg("-l", action="store_true"),
    cli.arg("--keep", action="store_true", required=True), cli.arg("-t", metavar="N"),
    cli.arg("--many", nargs="+"), cli.arg("--kind", choices=("a", "b")),
    cli.arg("--all", action="append", default=[]),
    cli.arg("--maybe", nargs="?", const="x", default=None)])
def test_a_command_the_quick_parse_cannot_take_is_refused(argument) -> None:
    command = cli.Command("x", cli.cmd_df, "help", cli.POINT, argument, quick=True)
    with pytest.raises(ValueError, match="the quick parse cannot take"):
        cli.quick_grammar(command)


def test_a_flag_with_a_dash_is_parsed_as_argparse_does(monkeypatch) -> None:
    command = cli.Command("edit-image", cli.cmd_edit_image, "help", cli.NAME,
                          cli.arg("--read-only", action="store_true"), quick=True)
    monkeypatch.setattr(cli, "COMMANDS", [command])
    monkeypatch.setattr(cli, "QUICK", {"edit-image": cli.quick_grammar(command)})
    for argv in (["edit-image", "web"], ["edit-image", "--read-only", "web"]):
        assert vars(cli.quick_args(argv)) == argparse_args(argv)


def test_the_quick_parse_builds_no_parser(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> argparse.ArgumentParser:
        raise AssertionError("argparse used for a plain line")
    monkeypatch.setattr(cli, "build_parser", refuse)
    for argv in TAKEN:
        assert cli.quick_args(argv) is not None


# --- the quick exit: no interpreter teardown after a quickly parsed line ---------
def console(root, *argv: str, stdout=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)     # buffered, as users run it: what the exit must flush
    return subprocess.run([sys.executable, "-c", "from stacko.cli import console_main; "
                           "console_main()", "--root", str(root), *argv],
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def test_the_quick_exit_delivers_all_output_and_the_status(tmp_path) -> None:
    from stacko.records import Image
    from stacko.state import Store
    store = Store(str(tmp_path / "root"))
    names = [f"image-{i:05d}-{'x' * 60}" for i in range(3000)]     # ~200 KB of names
    with store.locked(exclusive=True):
        store.save_images({n: Image(n, store.new_layer()) for n in names})
    r = console(store.root, "list-images")
    assert r.returncode == 0 and r.stdout == "".join(n + "\n" for n in names) and r.stderr == ""
    with open(tmp_path / "out", "w") as f:     # a file: fully buffered, not line buffered
        assert console(store.root, "list-images", stdout=f).returncode == 0
    assert (tmp_path / "out").read_text() == "".join(n + "\n" for n in names)
    r = console(store.root, "is-stackpoint-mounted", "nothing")
    assert r.returncode == 1 and "no stackpoint named 'nothing'" in r.stderr
    r = console(store.root, "get-stackpoint-dir", "bad name")        # argparse's line
    assert r.returncode == 2 and "invalid name" in r.stderr


def test_import_image_ends_without_the_teardown(tmp_path) -> None:
    """import-image (parsed by argparse: its grammar is beyond the quick parse)
    ends as a quick command does, once it has closed all it opened and no other
    thread runs; a line argparse refuses still ends through sys.exit."""
    from ocigen import f, write_layout
    layout = tmp_path / "layout"
    write_layout(layout, [[f("a", b"1")], [f("b", b"2")]])
    probe = EXIT_PROBE
    root = str(tmp_path / "root")
    for argv, status in ((["import-image", "x", str(layout)], 0),
                         (["import-image", "y", str(tmp_path / "none")], 1)):
        r = subprocess.run([sys.executable, "-c", probe, "--root", root, *argv],
                           stderr=subprocess.PIPE, text=True)
        assert r.returncode == status and r.stderr.endswith(f"os._exit({status})"), r.stderr
    r = subprocess.run([sys.executable, "-c", probe, "--root", root, "import-image", "x"],
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and "os._exit" not in r.stderr
    listed = subprocess.run([sys.executable, "-m", "stacko", "--root", root, "list-images"],
                            stdout=subprocess.PIPE, text=True)
    assert listed.stdout.split() == ["x", "x.layer-1"]
