#!/usr/bin/env python3
"""Write the stacko(8) man page, generated from the argparse parser.

    python3 tools/gen_manpage.py [OUTPUT]      (default: stdout)

The synopsis, every command, its arguments and options and their help come
from stacko.cli.build_parser(), so the page says what --help says.  The prose
around them (files, environment, exit status, boot) is the CLI contract's, which
only ever grows.  Set SOURCE_DATE_EPOCH for a reproducible date.
"""
from __future__ import annotations

import os
import sys
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cliref  # noqa: E402
from stacko import __version__, examples, exitstatus  # noqa: E402
from stacko.state import DEFAULT_ROOT  # noqa: E402

DESCRIPTION = """\
stacko manages stacks of overlayfs layers. An \\fIimage\\fR is one immutable layer of
files, optionally stacked on a parent image; its stack is the chain image, parent,
\\&... down to a root image. An \\fIinstance\\fR is a writable copy-on-write layer on
top of an image's stack, owned by one stackpoint. A \\fIstackpoint\\fR is a named
directory that shows one instance (its current one) and remembers the instances
that were current before (its history), so that it can fall back without copying
or destroying files.
.PP
A stack is mounted as one overlayfs mount: every image of the stack is a lower
layer, the instance's layer is the upper one. Whether something is mounted is read
from the kernel, so every command tells the truth after a reboot.
.PP
Data (paths, names, JSON) goes to standard output; messages go to standard error.
Commands that mount or unmount need root. Concurrent invocations are serialised
by a lock in the state directory."""

TAIL = f"""\
.SH ENVIRONMENT
.TP
.B STACKO_ROOT
The state directory when \\fB\\-\\-root\\fR is not given (default: \\fI{DEFAULT_ROOT}\\fR).
.TP
.B STACKO_LOCK_TIMEOUT
Seconds a command waits for another one to release the lock (default: 300).
.SH FILES
.TP
.I {DEFAULT_ROOT}/images.json\\fR, \\fI{DEFAULT_ROOT}/stackpoints.json
The metadata, versioned JSON written atomically.
.TP
.I {DEFAULT_ROOT}/l/
Layer data of images and instances; \\fIw/\\fR holds their overlayfs work directories.
.TP
.I {DEFAULT_ROOT}/stackpoints/NAME
The directory of stackpoint NAME unless \\fBnew\\-stackpoint \\-\\-path\\fR named another.
.TP
.I {DEFAULT_ROOT}/.stacko\\-root
Marks the directory as a stacko root: stacko makes a root only in a missing or empty
directory, and removes leftovers of interrupted commands only in a marked one.
.TP
.I {DEFAULT_ROOT}/.stacko\\-spare
Allocated room (1 MiB or more) in which a deletion records itself when the filesystem is
full, so that deleting an unused image still makes room.
.TP
.I /etc/default/stacko
Read by the systemd unit (for instance \\fBSTACKO_ROOT=\\fR\\fIDIR\\fR).
.SH EXIT STATUS
{{exit_status}}
.SH BOOT
The template unit \\fBstacko\\-stackpoint@.service\\fR mounts a stackpoint at boot, after
the local file systems and before ordinary services, and unmounts it at shutdown.
The template unit \\fBstacko\\-confirm@.service\\fR runs \\fBconfirm\\-stackpoint\\fR after
systemd's \\fBboot\\-complete.target\\fR, so that a tentative cutover
(\\fBcutover\\-stackpoint \\-\\-tries\\fR \\fIN\\fR) becomes permanent once the boot's health
checks have passed; otherwise, after \\fIN\\fR boots, the boot's \\fBmount\\-stackpoint\\fR
falls back:
.PP
.RS
.B systemctl enable \\-\\-now stacko\\-stackpoint@\\fINAME\\fR
.br
.B systemctl enable stacko\\-confirm@\\fINAME\\fR
.RE
.SH EXAMPLES
{{examples}}
.SH SEE ALSO
.BR mount (8),
.BR umount (8),
.BR systemctl (1),
.BR systemd.unit (5)
"""


def roff(text: str) -> str:
    """Escape plain text for a roff line: backslashes, dashes, a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def marked(text: str) -> str:
    """Plain text with `commands` in it, for roff: the commands in bold."""
    parts = text.replace("…", "...").split("`")     # roff reads ASCII
    return "".join(bold(p) if i % 2 else roff(p) for i, p in enumerate(parts))


def exit_status() -> str:
    """EXIT STATUS, from stacko.exitstatus: the one list of them."""
    lines: List[str] = []
    for status, meaning in exitstatus.STATUSES:
        lines += [".TP", f".B {status}", marked(meaning[:1].upper() + meaning[1:]) + "."]
    return "\n".join(lines)


def examples_section() -> str:
    lines: List[str] = []
    for title, commands in examples.WORKFLOWS:
        lines += [".PP", marked(title), ".PP", ".RS", ".nf"]
        lines += [roff(c) for c in commands]
        lines += [".fi", ".RE"]
    return "\n".join(lines[1:])


def synopsis_line(cmd: cliref.Command) -> str:
    parts = [bold(cmd.name)]
    for a in cmd.options:
        flag = bold(a.flags[-1]) + (f" \\fI{roff(a.metavar)}\\fR" if a.takes_value else "")
        parts.append(flag if a.required else f"[{flag}]")
    for a in cmd.positionals:
        arg = f"\\fI{roff(a.metavar)}\\fR"
        parts.append(f"[{arg}]" if a.optional_positional else arg)
    return " ".join(parts)


def render() -> str:
    parser = cliref.cli.build_parser()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    lines: List[str] = [
        '.\\" Generated by tools/gen_manpage.py from stacko\'s argparse parser; do not edit.',
        f'.TH STACKO 8 "{date}" "stacko {__version__}" "System Administration"',
        ".SH NAME",
        "stacko \\- " + roff((parser.description or "").rstrip(".").lower()),
        ".SH SYNOPSIS",
        ".B stacko",
        " ".join(f"[{bold(a.flags[-1])}" + (f" \\fI{roff(a.metavar)}\\fR]" if a.takes_value
                                           else "]")
                 for a in cliref.global_options(parser) if a.flags[-1] != "--help"),
        "\\fIcommand\\fR [\\fIargument\\fR ...]",
        ".SH DESCRIPTION",
        DESCRIPTION,
        ".SH OPTIONS",
        "Of these, " + ", ".join(bold(f) for f in cliref.shared_flags() if f.startswith("--"))
        + " are accepted after the command too.",
    ]
    for a in cliref.global_options(parser):
        lines += [".TP", ", ".join(bold(f) for f in a.flags)
                  + (f" \\fI{roff(a.metavar)}\\fR" if a.takes_value else ""), roff(a.help)]
    for title, cmds in cliref.groups(cliref.commands(parser)):
        lines.append(f".SH {title}")
        for cmd in cmds:
            text = roff(cmd.help[:1].upper() + cmd.help[1:]) + "."
            if cmd.aliases:
                text += " Also called " + ", ".join(bold(a) for a in cmd.aliases) + "."
            lines += [".TP", synopsis_line(cmd), text]
            for a in cmd.options:
                lines += [".RS", ".TP", ", ".join(bold(f) for f in a.flags)
                          + (f" \\fI{roff(a.metavar)}\\fR" if a.takes_value else ""),
                          roff(a.help or "") or ".", ".RE"]
    lines.append(TAIL.replace("{exit_status}", exit_status())
                 .replace("{examples}", examples_section()))
    return "\n".join(lines) + ("" if lines[-1].endswith("\n") else "\n")


def main(argv: List[str]) -> int:
    return cliref.emit(render(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
