"""What a new admin sees when learning stacko: help for every argument, the
formats import-image reads, the command groups when no command is given, and
a suggestion instead of the list of every command when one is mistyped."""
from __future__ import annotations

import argparse

import pytest

from conftest import run_stacko
from stacko import cli


def subcommand_parsers() -> dict:
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_of_every_command_has_help() -> None:
    missing, seen = [], set()
    for command, parser in sorted(subcommand_parsers().items()):
        if id(parser) in seen:       # an alias: the same parser again
            continue
        seen.add(id(parser))
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                what = "/".join(action.option_strings) or action.metavar or action.dest
                missing.append(f"{command}: {what}")
    # Name each argument, so that whoever adds one knows what to fix.
    assert not missing, "arguments without help (give them help= in stacko/cli.py): " \
        + ", ".join(missing)


def test_the_global_options_have_help() -> None:
    for action in cli.build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            assert action.help, action.option_strings


def test_import_image_help_lists_the_formats(capsys) -> None:
    assert cli.main(["import-image", "-h"]) == 0
    help_text = capsys.readouterr().out
    for fmt in ("OCI image layout directory", "OCI archive", "docker archive",
                "rootfs tarball", "plain directory", "gzip or zstd", "stdin", "--ref"):
        assert fmt in help_text, fmt


def test_no_command_prints_the_command_groups(tmp_path) -> None:
    root = tmp_path / "none"
    for argv in ((), ("-v",)):
        r = run_stacko(root, *argv, rc=2)
        assert r.stdout == ""
        assert r.stderr.startswith("usage: stacko")
        for group in ("image commands:", "stackpoint commands:", "changes and upkeep:"):
            assert group in r.stderr
        assert "new-image" in r.stderr and "create an empty image" in r.stderr
        assert r.stderr.rstrip().endswith("stacko: error: no command given")
        assert "the following arguments are required" not in r.stderr
    assert not root.exists()


@pytest.mark.parametrize("word, meant", [
    ("mount", "did you mean mount-stackpoint?"),
    ("list", "did you mean list-images, list-stackpoints or list-events?"),
    ("inport-image", "did you mean import-image?"),
    ("cutover-stackpoint-instanc", "did you mean cutover-stackpoint?"),
    ("images", "did you mean list-images?"),
    ("chek", "did you mean check?"),
])
def test_a_mistyped_command_gets_a_suggestion(tmp_path, word, meant) -> None:
    root = tmp_path / "none"
    r = run_stacko(root, word, "deb12", rc=2)
    assert r.stdout == ""
    assert f"stacko: error: unknown command {word!r}; {meant}\n" in r.stderr
    # not the list of every command on one line, as argparse prints it
    assert "choose from" not in r.stderr
    assert "delete-stackpoint-instance" not in r.stderr
    assert not root.exists()


def test_a_word_like_no_command_gets_no_guess(tmp_path) -> None:
    r = run_stacko(tmp_path / "none", "frobnicate", rc=2)
    assert "stacko: error: unknown command 'frobnicate'\n" in r.stderr
    assert "`stacko -h` lists the commands" in r.stderr
    assert r.stdout == ""


def test_help_and_version_still_win_over_a_missing_command(capsys) -> None:
    assert cli.main(["-h"]) == 0
    assert "image commands:" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0


def test_import_image_parent_is_for_every_format(capsys) -> None:
    assert cli.main(["import-image", "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "PARENT an existing image to stack what is imported on" in text
    assert "a rootfs tarball on" not in text


def test_authfile_help_names_where_podman_keeps_credentials(capsys) -> None:
    assert cli.main(["pull-image", "-h"]) == 0
    text = "".join(capsys.readouterr().out.split())      # argparse wraps anywhere
    for path in ("$REGISTRY_AUTH_FILE", "$XDG_RUNTIME_DIR/containers/auth.json",
                 "/run/containers/UID/auth.json", "~/.config/containers/auth.json",
                 "~/.docker/config.json"):
        assert path in text, path


@pytest.mark.parametrize("command", ["new-image", "edit-image", "import-image", "pull-image",
                                     "new-stackpoint", "cutover-stackpoint",
                                     "fallback-stackpoint", "list-events"])
def test_everyday_commands_have_examples(capsys, command: str) -> None:
    from stacko import examples
    assert cli.main([command, "-h"]) == 0
    text = capsys.readouterr().out
    assert "\nexamples:\n" in text
    for line in examples.PER_COMMAND[command]:
        assert f"  {line}\n" in text
        if not line.startswith(("#", "stacko ")):
            continue
        # every example parses as the command line it shows
        import shlex
        words = shlex.split(line, comments=True)
        if words[:1] == ["stacko"]:
            assert not isinstance(cli.parse(words[1:]), int), line


def test_cutover_help_says_where_a_check_runs(capsys) -> None:
    assert cli.main(["cutover-stackpoint", "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "on the host, in the stackpoint's directory" in text
    assert 'chroot "$STACKO_DIR"' in text and "/proc" in text
