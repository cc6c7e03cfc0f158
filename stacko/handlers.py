"""What each command does with its parsed line: turn it into a typed call of the
logic (images, stackpoints, oci, registry …) and print the result.

A handler takes the parsed line (an argparse Namespace, or the quick parse's
Args, which has the same attributes) and returns the exit status.  stdout
gets results only (out, print_json); messages go to stderr.
"""
from __future__ import annotations

import os
import sys

from stacko.errors import StackoError
from stacko.state import DEFAULT_ROOT, Store


def store(args: Args) -> Store:
    root = getattr(args, "root", None) or os.environ.get("STACKO_ROOT") or DEFAULT_ROOT
    return Store(root)


def out(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise                   # main() ends quietly: the reader went away
    except OSError as e:        # stdout on a full or failing disk
        raise StackoError(f"cannot write to stdout: {e.strerror or e}") from None


def print_json(data: object) -> None:
    import json     # here: json imports re and enum (docs/startup.md)
    out(json.dumps(data, indent=2, sort_keys=True))


def cmd_new_image(args: Args) -> int:
    from stacko import images
    images.new_image(store(args), args.name, args.parent, configs=args.config,
                     annotations=args.annotation)
    return 0


def cmd_edit_image(args: Args) -> int:
    from stacko import images
    out(images.edit_image(store(args), args.name, read_only=args.read_only))
    return 0


def cmd_close_image(args: Args) -> int:
    from stacko import images
    images.close_image(store(args), args.name)
    return 0


def cmd_delete_image(args: Args) -> int:
    from stacko import images
    images.delete_image(store(args), args.name)
    return 0


def cmd_list_images(args: Args) -> int:
    from stacko import images
    s = store(args)
    if not (args.json or args.tree):       # names only: the most run, the least work
        lines = images.image_names(s)
    else:
        infos = images.list_images(s)
        if args.json:
            print_json([i.to_dict(s) for i in infos])
            return 0
        lines = images.draw_tree(infos)
    if lines:
        out("\n".join(lines))
    return 0


def cmd_import_image(args: Args) -> int:
    from stacko import oci
    oci.import_image(store(args), args.name, args.path, args.parent, ref=args.ref)
    return 0


def cmd_export_image(args: Args) -> int:
    from stacko import oci
    oci.export_image(store(args), args.name, args.path, compression=args.compression)
    return 0


def cmd_verify_image(args: Args) -> int:
    from stacko import images
    from stacko.changes import show_path
    s = store(args)
    status = 0
    for image in args.names:
        # Like grep with several files: each line names its image when there are several.
        lead = f"{image}: " if len(args.names) > 1 else ""
        try:
            found = images.verify_image(s, image)
            if args.policy is not None:
                from stacko.signing import pullsign
                refused = pullsign.recheck(s, image, args.policy)
                if refused is not None:
                    out(f"S {image} {refused[0]}")
                    print(f"stacko: error: image {image!r}: {refused[1]}", file=sys.stderr)
                    status = 1
        except StackoError as e:       # that image only: the others are still verified
            print(f"stacko: error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"stacko: hint: {e.hint}", file=sys.stderr)
            status = 1
            continue
        for kind, path in found:
            out(f"{lead}{kind} {show_path(path)}")
        if found:
            print(f"stacko: error: image {image!r}: {len(found)} difference"
                  f"{'s' if len(found) != 1 else ''} from the content recorded when it was "
                  "sealed", file=sys.stderr)
            status = 1
    return status


def registry_options(args: Args) -> object:
    from stacko.registry.auth import Options, with_password
    return with_password(Options(creds=args.creds, authfile=args.authfile,
                                 cert_dir=args.cert_dir, tls_verify=args.tls_verify),
                         args.password_stdin, args.password_file)


def cmd_pull_image(args: Args) -> int:
    from stacko.moved import Tally
    from stacko.registry import pull
    tally = Tally("pulled")
    pull.pull_image(store(args), args.name, args.ref, platform=args.platform,
                    options=registry_options(args), policy=args.policy,
                    registries_d=args.registries_d, tally=tally)
    print(tally.summary(), file=sys.stderr)
    return 0


def cmd_push_image(args: Args) -> int:
    from stacko.moved import Tally
    from stacko.registry import push
    tally = Tally("pushed")
    sign = {"sign_by": args.sign_by, "sigstore_key": args.sign_by_sigstore_private_key,
            "passphrase_file": args.sign_passphrase_file, "sign_identity": args.sign_identity,
            "registries_d": args.registries_d}
    push.push_image(store(args), args.name, args.ref, compression=args.compression,
                    options=registry_options(args),
                    sign=sign if any(v is not None for k, v in sign.items()
                                     if k != "registries_d") else None, tally=tally)
    print(tally.summary(), file=sys.stderr)
    return 0


def cmd_generate_sigstore_key(args: Args) -> int:
    from stacko.signing import keygen
    keygen.generate_key_files(args.output_prefix, args.passphrase_file)
    return 0


def cmd_new_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.new_stackpoint(store(args), args.point, args.image, path=args.path,
                               nodev=args.nodev, nosuid=args.nosuid)
    return 0


def cmd_delete_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.delete_stackpoint(store(args), args.point)
    return 0


def cmd_mount_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    out(stackpoints.mount_stackpoint(store(args), args.point))
    return 0


def cmd_umount_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.umount_stackpoint(store(args), args.point, lazy=args.lazy)
    return 0


def cmd_get_stackpoint_dir(args: Args) -> int:
    from stacko import stackpoints
    out(stackpoints.stackpoint_dir(store(args), args.point))
    return 0


def cmd_is_stackpoint_mounted(args: Args) -> int:
    from stacko import stackpoints
    return 0 if stackpoints.is_mounted(store(args), args.point) else 1


def cmd_cutover_stackpoint(args: Args) -> int:
    if args.check is not None:
        from stacko import checked
        timeout = CHECK_TIMEOUT if args.check_timeout is None else args.check_timeout
        out(checked.checked_cutover(store(args), args.point, args.image, args.check,
                                    timeout=timeout, tries=args.tries))
        return 0
    if args.check_timeout is not None:
        from stacko.errors import UsageError
        raise UsageError("--check-timeout needs --check")
    from stacko import stackpoints
    out(stackpoints.cutover(store(args), args.point, args.image, tries=args.tries))
    return 0


def cmd_update_stackpoint(args: Args) -> int:
    from stacko import update
    if args.check_timeout is not None and args.check is None:
        from stacko.errors import UsageError
        raise UsageError("--check-timeout needs --check")
    update.update_stackpoint(
        store(args), args.point, args.ref, dry_run=args.dry_run, platform=args.platform,
        options=registry_options(args), policy=args.policy, registries_d=args.registries_d,
        check=args.check, tries=args.tries, keep=args.keep,
        check_timeout=CHECK_TIMEOUT if args.check_timeout is None else args.check_timeout)
    return 0


def cmd_confirm_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.confirm(store(args), args.point)
    return 0


def cmd_fallback_stackpoint(args: Args) -> int:
    from stacko import stackpoints
    out(stackpoints.fallback(store(args), args.point))
    return 0


def cmd_new_stackpoint_instance(args: Args) -> int:
    from stacko import instances
    instances.new_instance(store(args), args.point, args.image)
    return 0


def cmd_set_stackpoint_instance(args: Args) -> int:
    from stacko import instances
    instances.set_instance(store(args), args.point, args.image)
    return 0


def cmd_delete_stackpoint_instance(args: Args) -> int:
    from stacko import instances
    instances.delete_instance(store(args), args.point, args.image)
    return 0


def cmd_list_stackpoints(args: Args) -> int:
    from stacko import stackpoints
    infos = stackpoints.list_stackpoints(store(args))
    if args.json:
        print_json([i.to_dict() for i in infos])
        return 0
    from stacko import events, table
    # On a terminal the table fits its width, as ps and systemctl fit theirs
    # (table.fit); piped, nothing is cut, for the scripts that read it.
    width = terminal_columns() if sys.stdout.isatty() else None
    rows = [("NAME", "CURRENT", "MOUNTED", "DIR", "INSTANCES", "HISTORY", "LAST EVENT")]
    shorts = []
    for i in infos:
        mounted = "no" if i.mounted is None else ("yes" if i.mounted == i.point.current
                                                   else f"yes ({i.mounted})")
        # The columns before LAST EVENT stay one word each, for scripts that split them.
        event = i.point.events[-1] if i.point.events else None
        last = events.describe(event) if event else "-"
        short = f"{event.time} {event.action}" if event else "-"   # list-events has the rest
        tentative = i.point.tentative
        if tentative is not None and tentative.image == i.point.current:
            s = "y" if tentative.tries_left == 1 else "ies"
            last += f" [tentative: {tentative.tries_left} tr{s} left, confirm-stackpoint]"
            short = f"[tentative: {tentative.tries_left} tr{s} left] {short}"
        rows.append((i.point.name, i.point.current, mounted, i.directory,
                     ",".join(x.image for x in i.point.instances),
                     ",".join(reversed(i.point.history)) or "-", last))
        shorts.append(short)
    if infos:
        for line in table.fit(rows, ["LAST EVENT"] + shorts, width):
            out(line)
    return 0


def cmd_list_events(args: Args) -> int:
    from stacko import eventsview
    since = None if args.since is None else eventsview.parse_since(args.since)
    found = eventsview.list_events(store(args), args.point, since)
    if args.json:
        print_json([eventsview.to_dict(point, event) for point, event in found])
    elif found:
        out("\n".join(eventsview.line(point, event) for point, event in found))
    return 0


def cmd_diff_stackpoint(args: Args) -> int:
    from stacko import changes
    for kind, path in changes.diff(store(args), args.point):
        out(f"{kind} {path}")
    return 0


def cmd_commit_stackpoint(args: Args) -> int:
    from stacko import changes
    changes.commit(store(args), args.point, args.new_image)
    return 0


def cmd_prune_stackpoint(args: Args) -> int:
    from stacko import changes
    changes.prune(store(args), args.point, keep=args.keep)
    return 0


def cmd_df(args: Args) -> int:
    from stacko import df
    report = df.disk_usage(store(args))
    if args.json:
        print_json(report.to_dict())
    else:
        for line in df.render(report):
            out(line)
    return 0


def cmd_check(args: Args) -> int:
    from stacko import check
    report = check.check(store(args), repair=args.repair, content=args.content)
    for line in report:
        out(line)
    return 1 if report.remaining else 0      # with --repair: what could not be repaired


CHECK_TIMEOUT = 60.0


def terminal_columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Args:
    """A parsed line: for a quickly parsed line, the attributes argparse's
    Namespace would have.  Handlers take either (they only read attributes),
    and are annotated with this one so that argparse stays unimported."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)
