"""The stacko command line: parse, call, print.  Logic lives elsewhere."""
from __future__ import annotations

import os
import sys

from stacko import __version__
from stacko.errors import Interrupted, StackoError
from stacko.lean import signal
from stacko.state import DEFAULT_ROOT, Store

TYPE_CHECKING = False
if TYPE_CHECKING:   # aliases for annotations only, never evaluated at run time
    import argparse
    from collections.abc import Callable, Sequence

    Handler = Callable[["Args"], int]

IMAGE_COMMANDS = ("new-image edit-image close-image delete-image list-images import-image "
                  "export-image pull-image push-image verify-image generate-sigstore-key")
POINT_COMMANDS = ("new-stackpoint delete-stackpoint mount-stackpoint umount-stackpoint "
                  "get-stackpoint-dir is-stackpoint-mounted cutover-stackpoint "
                  "fallback-stackpoint new-stackpoint-instance set-stackpoint-instance "
                  "delete-stackpoint-instance list-stackpoints list-events confirm-stackpoint "
                  "update-stackpoint")
UPKEEP_COMMANDS = "diff-stackpoint commit-stackpoint prune-stackpoint df check"


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


# --- image commands -----------------------------------------------------------
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


# --- stackpoint commands --------------------------------------------------------
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
    from stacko import stackpoints
    stackpoints.new_instance(store(args), args.point, args.image)
    return 0


def cmd_set_stackpoint_instance(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.set_instance(store(args), args.point, args.image)
    return 0


def cmd_delete_stackpoint_instance(args: Args) -> int:
    from stacko import stackpoints
    stackpoints.delete_instance(store(args), args.point, args.image)
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


# --- changes and upkeep ------------------------------------------------------------
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


# --- the parser ------------------------------------------------------------------
if TYPE_CHECKING:
    Arg = tuple[tuple[str, ...], dict[str, object]]


def arg(*flags: str, **kwargs: object) -> Arg:
    return flags, kwargs


def usage_error(message: str) -> Exception:
    """What a type= function raises for a bad value (argparse is loaded then)."""
    import argparse
    return argparse.ArgumentTypeError(message)


def name(text: str) -> str:
    """Names are checked while parsing, so that a bad one is a usage error (2)."""
    from stacko.errors import InvalidName
    from stacko.records import check_name
    try:
        return check_name(text)
    except InvalidName as e:
        raise usage_error(f"{e.message} ({e.hint})") from None


CHECK_TIMEOUT = 60.0


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage_error(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e9:       # also refuses nan and inf
        raise usage_error(f"must be more than 0: {text!r}")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage_error(f"not a whole number: {text!r}") from None
    if value < 0:
        raise usage_error(f"must be 0 or more: {text!r}")
    return value


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise usage_error(f"not true or false: {text!r}")


def reference(text: str) -> str:
    """A REF is checked while parsing too: a malformed one is a usage error (2)."""
    from stacko.errors import UsageError
    from stacko.registry.ref import parse
    try:
        parse(text)
    except UsageError as e:
        raise usage_error(f"{e.message} ({e.hint})") from None
    return text


def described(argument: Arg, help: str) -> Arg:
    """argument with the help it has in one command."""
    flags, kwargs = argument
    return flags, {**kwargs, "help": help}


NAME = arg("name", metavar="NAME", type=name, help="the image")
PARENT = arg("parent", metavar="PARENT", type=name, nargs="?",
             help="an existing image to stack the new one on (default: none, a bottom image)")
POINT = arg("point", metavar="POINT", type=name, help="the stackpoint")
IMAGE = arg("image", metavar="IMAGE", type=name, help="the image")
JSON = arg("--json", action="store_true", help="one JSON array of objects")
REF = arg("ref", metavar="REF", type=reference,
          help="[docker://]HOST[:PORT]/REPO[:TAG|@sha256:DIGEST] (TAG: latest)")
REGISTRY_OPTIONS = (
    arg("--creds", metavar="USER[:PASS]",
        help="credentials for the registry (default: from the auth file); a PASS here is "
             "visible to every local user in ps: prefer --password-stdin"),
    arg("--password-stdin", action="store_true",
        help="read the password of --creds USER from stdin (one line)"),
    arg("--password-file", metavar="FILE",
        help="read the password of --creds USER from FILE (one line)"),
    arg("--authfile", metavar="FILE",
        help="auth file, as `podman login --authfile FILE` writes it (default: the first "
             "with an entry for the registry of $REGISTRY_AUTH_FILE, "
             "$XDG_RUNTIME_DIR/containers/auth.json (unset: /run/containers/UID/auth.json), "
             "~/.config/containers/auth.json, ~/.docker/config.json)"),
    arg("--cert-dir", metavar="DIR",
        help="CA certificates (*.crt) and client certificates (*.cert, *.key) for TLS"),
    arg("--tls-verify", metavar="BOOL", type=boolean, nargs="?", const=True, default=True,
        help="verify the registry's TLS certificate (default: true); false also allows "
             "plain HTTP"),
)
POLICY = arg("--policy", metavar="FILE",
             help="the trust policy, containers-policy.json(5) (default: "
                  "/etc/containers/policy.json; none there: any image is accepted)")
REGISTRIES_D = arg("--registries.d", dest="registries_d", metavar="DIR",
                   help="where the lookaside of GnuPG signatures is configured, "
                        "containers-registries.d(5) (default: /etc/containers/registries.d)")
SIGNING_OPTIONS = (
    arg("--sign-by", metavar="FINGERPRINT",
        help="sign the pushed manifest with this GnuPG key (simple signing, in the "
             "lookaside staging location registries.d names)"),
    arg("--sign-by-sigstore-private-key", metavar="FILE",
        help="sign the pushed manifest with this sigstore (cosign) private key, as the "
             "sha256-<hex>.sig attachment"),
    arg("--sign-passphrase-file", metavar="FILE",
        help="the signing key's passphrase: the first line of FILE"),
    arg("--sign-identity", metavar="REF",
        help="the identity the signature names (default: REF)"),
    REGISTRIES_D,
)
COMPRESSION = arg("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                  help="layer compression (default: gzip)")

IMPORT_FORMATS = """\
PATH may be (recognised from its content, never from its name):
  an OCI image layout directory      (skopeo copy ... oci:DIR, umoci)
  an OCI archive                     (podman save --format oci-archive)
  a docker archive                   (docker save, podman save)
  a rootfs tarball, one layer        (tar -C DIR -c .)
  a plain directory, one layer       (a chroot or build tree: owners, modes, times,
                                      xattrs, hard links and devices are kept; data
                                      is cloned where the filesystem can; other
                                      filesystems mounted inside are not entered)
Tarballs may be gzip or zstd compressed.  '-' reads the archive from stdin.
A layout or archive that holds several images needs --ref to choose one."""


class Command:
    """One command of the table: its handler, help and arguments.  quick: the
    quick parse takes its plainly well-formed lines (see quick_args)."""

    def __init__(self, name: str, handler: Handler, help: str, *args: Arg,
                 aliases: Sequence[str] = (), epilog: str | None = None,
                 quick: bool = False) -> None:
        self.name, self.handler, self.help, self.args, self.aliases = \
            name, handler, help, args, tuple(aliases)
        self.epilog = epilog
        self.quick = quick


COMMANDS = [
    Command("new-image", cmd_new_image, "create an empty image, stacked on PARENT if given",
            described(NAME, "the name of the new image"), PARENT,
            arg("--config", metavar="KEY=VALUE", action="append", default=[],
                help="a run setting of the image (Env, Cmd, Entrypoint, WorkingDir, User, "
                     "Labels, ExposedPorts, Volumes, StopSignal), on top of PARENT's; "
                     "repeatable; KEY= clears it"),
            arg("--annotation", metavar="KEY=VALUE", action="append", default=[],
                help="an OCI annotation of the image (repeatable; KEY= removes it)")),
    Command("edit-image", cmd_edit_image,
            "mount an image so that writes land in its own layer; print the directory",
            described(NAME, "the image to mount"),
            arg("--read-only", action="store_true",
                help="mount the image's stack read-only, for inspection")),
    Command("close-image", cmd_close_image, "unmount an image opened by edit-image",
            described(NAME, "the image to unmount")),
    Command("delete-image", cmd_delete_image, "remove an image and its layer",
            described(NAME, "the image to remove")),
    Command("list-images", cmd_list_images, "show the images, one name per line",
            arg("--tree", action="store_true", help="draw parents above their children"), JSON,
            quick=True),
    Command("import-image", cmd_import_image,
            "import an OCI layout, OCI or docker archive, rootfs tarball or directory",
            # No type=name: import_image checks it, and can tell a swapped PATH NAME.
            arg("name", metavar="NAME", help="the name of the new (top) image"),
            arg("path", metavar="PATH", help="what to import ('-': stdin); see below"),
            described(PARENT, "an existing image to stack what is imported on (its bottom "
                              "layer, whatever the format; default: none)"),
            arg("--ref", help="which image of a layout or archive that holds several "
                              "(its ref name or repository tag)"),
            epilog=IMPORT_FORMATS),
    Command("export-image", cmd_export_image,
            "write an image's stack as an OCI layout in a tar ('-': stdout)",
            # No type=name: export_image checks it, and can tell a swapped PATH NAME.
            arg("name", metavar="NAME", help="the image to export, with the images beneath it"),
            arg("path", metavar="PATH", help="the tar file to write ('-': stdout)"),
            COMPRESSION),
    Command("verify-image", cmd_verify_image,
            "compare images' content with the manifest recorded when they were sealed: "
            "M changed, - missing, + extra",
            arg("names", metavar="NAME", type=name, nargs="+", help="the images to verify"),
            arg("--policy", metavar="FILE",
                help="also check, offline, the signatures kept from the pull against this "
                     "trust policy: S NAME REASON when refused")),
    Command("pull-image", cmd_pull_image,
            "pull an image from an OCI registry: what import-image of it would make",
            described(NAME, "the name of the new (top) image"), REF,
            arg("--platform", metavar="OS/ARCH",
                           help="the platform to take from a multi-platform image "
                                "(default: this machine's)"),
            POLICY, REGISTRIES_D, *REGISTRY_OPTIONS),
    Command("push-image", cmd_push_image,
            "push an image's stack to an OCI registry, one layer per image",
            described(NAME, "the image to push, with the images beneath it"), REF, COMPRESSION,
            *SIGNING_OPTIONS, *REGISTRY_OPTIONS),
    Command("generate-sigstore-key", cmd_generate_sigstore_key,
            "write a new sigstore (cosign) key pair: PREFIX.private (encrypted) and PREFIX.pub",
            arg("--output-prefix", metavar="PREFIX", required=True,
                help="the files to write: PREFIX.private and PREFIX.pub (never overwritten)"),
            arg("--passphrase-file", metavar="FILE",
                help="the passphrase that encrypts the private key: FILE's first line "
                     "(default: asked twice on the terminal)")),
    Command("new-stackpoint", cmd_new_stackpoint,
            "create a stackpoint and its first instance, of IMAGE (does not mount)",
            described(POINT, "the name of the new stackpoint"),
            described(IMAGE, "the image its first instance shows"),
            arg("--path", metavar="DIR",
                help="the stackpoint's directory (default: <root>/stackpoints/POINT)"),
            arg("--nodev", action="store_true",
                help="mount it without device nodes (for images you do not trust); remembered"),
            arg("--nosuid", action="store_true",
                help="mount it without setuid and setgid (for images you do not trust); "
                     "remembered")),
    Command("delete-stackpoint", cmd_delete_stackpoint,
            "remove a stackpoint and all its instances' data",
            described(POINT, "the stackpoint to remove")),
    Command("mount-stackpoint", cmd_mount_stackpoint,
            "mount the current instance at the stackpoint's directory; print it",
            described(POINT, "the stackpoint to mount"), quick=True),
    Command("umount-stackpoint", cmd_umount_stackpoint, "unmount a stackpoint",
            described(POINT, "the stackpoint to unmount"),
            arg("--lazy", action="store_true",
                help="detach now even when busy; the kernel frees it when unused"),
            quick=True),
    Command("get-stackpoint-dir", cmd_get_stackpoint_dir, "print a stackpoint's directory",
            POINT, quick=True),
    Command("is-stackpoint-mounted", cmd_is_stackpoint_mounted,
            "exit 0 when the stackpoint is mounted, 1 when not", POINT, quick=True),
    Command("cutover-stackpoint", cmd_cutover_stackpoint,
            "switch a stackpoint to its instance of IMAGE (made if needed) and mount it",
            described(POINT, "the stackpoint to switch"),
            described(IMAGE, "the image to switch it to"),
            arg("--check", metavar="CMD",
                help="then run CMD with sh -c on the host, in the stackpoint's directory "
                     "($STACKO_DIR); if it fails or times out, fall back to the instance that "
                     "was current before, exit 1. Inside the new root: 'chroot \"$STACKO_DIR\" "
                     "CMD', which sees the new root's own /proc, /dev and /sys: stacko mounts "
                     "nothing there"),
            arg("--check-timeout", metavar="S", type=seconds,
                help=f"seconds CMD may run (default: {CHECK_TIMEOUT:g})"),
            arg("--tries", metavar="N", type=non_negative,
                help="tentative: after N mounts of the unmounted stackpoint (N boots) "
                     "without confirm-stackpoint, mount-stackpoint falls back"),
            aliases=["cutover-stackpoint-instance"]),
    Command("fallback-stackpoint", cmd_fallback_stackpoint,
            "switch a stackpoint back to the instance that was current before; mount it",
            described(POINT, "the stackpoint to switch back"),
            aliases=["fallback-stackpoint-instance"]),
    Command("new-stackpoint-instance", cmd_new_stackpoint_instance,
            "create an instance of IMAGE for POINT without making it current", POINT,
            described(IMAGE, "the image of the new instance")),
    Command("set-stackpoint-instance", cmd_set_stackpoint_instance,
            "make POINT's instance of IMAGE current (remounting if mounted)", POINT,
            described(IMAGE, "the image whose instance becomes current")),
    Command("delete-stackpoint-instance", cmd_delete_stackpoint_instance,
            "delete a non-current instance and its data", POINT,
            described(IMAGE, "the image whose instance to delete")),
    Command("list-stackpoints", cmd_list_stackpoints,
            "show each stackpoint: directory, current image, mounted, instances, history, "
            "last event", JSON, quick=True),
    Command("list-events", cmd_list_events,
            "show the stackpoints' events (cutovers, fallbacks, checks), one line "
            "each, oldest first",
            arg("point", metavar="POINT", type=name, nargs="?",
                help="only this stackpoint's events (default: every stackpoint's)"),
            arg("--since", metavar="TIME",
                help="only events at or after TIME: a time in UTC (2026-11-25T21:00:00Z, "
                     "2026-11-25 21:00, 2026-11-25) or with its offset, or how long ago "
                     "(30m, 2h, 1d)"),
            arg("--json", action="store_true",
                help="one JSON array of objects: stackpoint, time, action, from, to, reason")),
    Command("update-stackpoint", cmd_update_stackpoint,
            "pull what REF names now and cut the stackpoint over to it, unless it runs it",
            described(POINT, "the stackpoint to update"), REF,
            arg("--platform", metavar="OS/ARCH",
                help="the platform to take from a multi-platform image (default: this "
                     "machine's)"),
            POLICY, REGISTRIES_D, *REGISTRY_OPTIONS,
            arg("--check", metavar="CMD",
                help="as cutover-stackpoint --check: a failing CMD falls back, exit 1"),
            arg("--check-timeout", metavar="S", type=seconds,
                help=f"seconds CMD may run (default: {CHECK_TIMEOUT:g})"),
            arg("--tries", metavar="N", type=non_negative,
                help="as cutover-stackpoint --tries: tentative for N boots"),
            arg("--keep", metavar="N", type=non_negative,
                help="then prune the instances beyond the N most recent of the history, and "
                     "the images only they used that updates pulled from REF (N >= 1)"),
            arg("--dry-run", action="store_true",
                help="say what would happen; change nothing")),
    Command("confirm-stackpoint", cmd_confirm_stackpoint,
            "make a tentative cutover (--tries N) permanent; nothing tentative: do nothing",
            described(POINT, "the stackpoint whose tentative cutover to confirm")),
    Command("diff-stackpoint", cmd_diff_stackpoint,
            "list what the current instance changed: A added, C changed, D deleted", POINT),
    Command("commit-stackpoint", cmd_commit_stackpoint,
            "turn the current instance's changes into NEWIMAGE and switch to a fresh instance of it",
            described(POINT, "the stackpoint whose changes to commit"),
            arg("new_image", metavar="NEWIMAGE", type=name,
                help="the name of the new image, stacked on the current one")),
    Command("prune-stackpoint", cmd_prune_stackpoint,
            "delete the oldest non-current instances beyond the N most recent in the history",
            POINT, arg("--keep", metavar="N", type=non_negative, required=True,
                       help="how many instances of the history to keep")),
    Command("df", cmd_df,
            "disk usage of images and instances, what is reclaimable, free space",
            arg("--json", action="store_true", help="one JSON object"), quick=True),
    Command("check", cmd_check,
            "compare metadata, layer directories and mounts; report every mismatch",
            arg("--repair", action="store_true",
                help="fix what can be fixed without losing user data, and say what was done"),
            arg("--content", action="store_true",
                help="also verify every image's content against its manifest, as "
                     "verify-image does (reads all the data)")),
]


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


_formatter: type | None = None


def formatter() -> type:
    """argparse's formatter, told the terminal's width: left to find it itself,
    it imports shutil (and with it bz2, lzma and zlib) for every parser, on
    every start, help or not.  Made on first use: argparse is imported only by
    a line the quick parse (quick_args) does not take."""
    global _formatter
    if _formatter is None:
        import argparse

        class Formatter(argparse.RawDescriptionHelpFormatter):
            def __init__(self, prog: str, indent_increment: int = 2,
                         max_help_position: int = 24, width: int | None = None) -> None:
                if width is None:
                    width = terminal_columns() - 2          # as argparse does
                super().__init__(prog, indent_increment, max_help_position, width)
        _formatter = Formatter
    return _formatter


def common_options() -> argparse.ArgumentParser:
    import argparse
    # SUPPRESS: given before or after the command, a shared option is not reset.
    common = argparse.ArgumentParser(add_help=False, formatter_class=formatter())
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"state directory (default: $STACKO_ROOT or {DEFAULT_ROOT})")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log every external command to stderr")
    return common


def command_word(argv: Sequence[str]) -> str | None:
    """The word of the line that names the command, found without parsing it."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif word == "--":
            return next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def wanted_command(argv: Sequence[str]) -> Command | None:
    """The command named on the line, found without parsing it, or None."""
    word = command_word(argv)
    return next((c for c in COMMANDS if word == c.name or word in c.aliases), None)


def suggestions(word: str) -> list[str]:
    """Commands the user may have meant by word: those it begins; else those
    nearly as close in spelling as the closest; else those containing it."""
    import difflib    # here: only a mistyped command pays for it
    names = [c.name for c in COMMANDS]
    found = [n for n in names if n.startswith(word)]
    if not found:
        ratio = {c.name: max(difflib.SequenceMatcher(None, word, n).ratio()
                             for n in (c.name,) + c.aliases) for c in COMMANDS}
        best = max(ratio.values())
        found = sorted((n for n in names if ratio[n] >= max(0.75, best - 0.08)),
                       key=lambda n: -ratio[n])
    if not found:
        found = [n for n in names if word in n]
    return found[:4]


def unknown_command(parser: argparse.ArgumentParser, word: str) -> int:
    """A word that names no command: say which ones it may have meant, not all."""
    from stacko import words
    close = suggestions(word) if word else []
    guess = f"; did you mean {words.join(close, 'or')}?" if close else ""
    sys.stderr.write(parser.format_usage())
    print(f"stacko: error: unknown command {word!r}{guess}", file=sys.stderr)
    print("stacko: hint: `stacko -h` lists the commands", file=sys.stderr)
    return 2


def command_groups() -> str:
    """The epilog of the whole parser's help: the commands by group."""
    import textwrap   # here: only the help shows it, and every start would pay for it
    return "\n".join(textwrap.fill(", ".join(names.split()), width=78, initial_indent=title,
                                   subsequent_indent="    ", break_on_hyphens=False)
                     for title, names in (("image commands: ", IMAGE_COMMANDS),
                                          ("stackpoint commands: ", POINT_COMMANDS),
                                          ("changes and upkeep: ", UPKEEP_COMMANDS)))


def build_parser(only: Command | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for speed at every start) one with just the command
    that was asked for; help and usage errors get the whole one."""
    import argparse
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="stacko", parents=[common],
        description="Stackable overlayfs images, copy-on-write instances and stackpoints.",
        formatter_class=formatter(),
        epilog=command_groups() if only is None else None)
    parser.add_argument("--version", action="version", version=f"stacko {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    from stacko.examples import epilog as examples
    for command in COMMANDS if only is None else [only]:
        epilog = "\n\n".join(t for t in (command.epilog, examples(command.name)) if t)
        p = sub.add_parser(command.name, parents=[common], help=command.help,
                           description=command.help, aliases=list(command.aliases),
                           epilog=epilog or None,
                           formatter_class=formatter())
        for flags, kwargs in command.args:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(handler=command.handler)
    return parser



def _terminate(signum: int, frame: object) -> None:
    raise Interrupted("terminated by a signal; what was begun has been undone")


# --- the quick parse --------------------------------------------------------------
# The commands boot scripts, prompts and monitors run many times a minute, by
# their positional arguments and their flags (store_true options).  argparse
# with its imports costs such a command more than its work (issue 13), so a
# line made only of these words, spelt out in full, is parsed here; any other
# line, however slightly different (an abbreviation, -h, --, a bad name, a
# missing argument), goes to argparse, which alone reports usage errors.
# tests/test_quickparse.py checks that the two parses agree.  The grammar is
# the command table's: each command marked quick=True gives its positionals
# (names, as type=name checks them) and its flags (store_true options).
def quick_grammar(command: Command) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the dests of the positionals, the flags spelt in full) of a command the
    quick parse may take: one whose every positional is one name and every
    option a flag.  Any other argument is a mistake in the table."""
    positional: list[str] = []
    flags: list[str] = []
    for names, kwargs in command.args:
        plain_flag = kwargs.get("action") == "store_true" and set(kwargs) <= {"action", "help"}
        if names[0].startswith("-") and len(names) == 1 and names[0].startswith("--") \
                and plain_flag:
            flags.append(names[0])
        elif not names[0].startswith("-") and kwargs.get("type") is name \
                and set(kwargs) <= {"type", "metavar", "help"}:
            positional.append(names[0])
        else:
            raise ValueError(f"{command.name}: the quick parse cannot take {names[0]}")
    return tuple(positional), tuple(flags)


def __getattr__(name: str) -> object:
    if name == "QUICK":      # every quick command's grammar, for tests (made when asked)
        return {c.name: quick_grammar(c) for c in COMMANDS if c.quick}
    raise AttributeError(f"module 'stacko.cli' has no attribute {name!r}")


class Args:
    """A parsed line: for a quickly parsed line, the attributes argparse's
    Namespace would have.  Handlers take either (they only read attributes),
    and are annotated with this one so that argparse stays unimported."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


def quick_args(argv: Sequence[str]) -> Args | None:
    """The parse of argv as argparse would make it, for a plainly well-formed
    line of one of the quick commands; None for every other line."""
    from stacko.records import is_name
    values: dict[str, object] = {}
    names: list[str] = []
    command = None
    words = iter(argv)
    for word in words:
        if word == "--root" or word.startswith("--root="):
            root = next(words, None) if word == "--root" else word[len("--root="):]
            if root is None or root.startswith("-") or "root" in values:
                return None
            values["root"] = root
        elif word in ("-v", "--verbose"):
            values["verbose"] = True
        elif command is None:
            quick = next((c for c in COMMANDS if c.name == word and c.quick), None)
            if quick is None:
                return None
            command = word
            positional, flags = quick_grammar(quick)     # only this command's
            values.update((flag[2:].replace("-", "_"), False) for flag in flags)
        elif word in flags:
            values[word[2:].replace("-", "_")] = True
        elif word.startswith("-") or not is_name(word):
            return None
        else:
            names.append(word)
    if command is None or len(names) != len(positional):
        return None
    handler = next(c.handler for c in COMMANDS if c.name == command)
    return Args(command=command, handler=handler, **dict(zip(positional, names)), **values)


def parse(argv: list[str]) -> object:
    """argparse's parse of argv: the namespace, or the exit status of -h,
    --version or a usage error (then already reported)."""
    only = wanted_command(argv)
    if only is None and not {"-h", "--help", "--version"} & set(argv):
        word = command_word(argv)
        parser = build_parser()
        if word is None:        # as `stacko -h`, on stderr since it is no result
            parser.print_help(sys.stderr)
            print("stacko: error: no command given", file=sys.stderr)
            return 2
        return unknown_command(parser, word)
    try:
        return build_parser(only).parse_args(argv)
    except SystemExit as e:           # -h, --version, or a usage error (2)
        return e.code if isinstance(e.code, int) else 2


_quick = False       # the line was parsed by quick_args: see console_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(f"stacko {__version__}")     # as argparse's version action prints it
        return 0
    global _quick
    args = quick_args(argv)
    _quick = args is not None
    if args is None:
        args = parse(argv)
        if isinstance(args, int):
            return args
    if getattr(args, "verbose", False):
        from stacko import log
        log.verbose = True
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args)
    except StackoError as e:
        print(f"stacko: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"stacko: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("stacko: interrupted", file=sys.stderr)
        return 130           # exitstatus.INTERRUPTED; errors.Interrupted: 143 (SIGTERM)
    except BrokenPipeError:
        # The reader went away (`stacko list-images | head`): nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        # A system call failed where no code said what it means (a full disk,
        # a read-only one): the file, the system's words and a hint; no traceback.
        from stacko.errors import os_error
        failure = os_error(e, store(args).root)
        print(f"stacko: error: {failure.message}\nstacko: hint: {failure.hint}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def console_main() -> None:
    status = main()
    if quick_exit_safe():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(status)       # the interpreter's own exit reports it, as ever
        # The interpreter's teardown (freeing every module and object) costs
        # a hot command a good part of its run (docs/startup.md) and does
        # nothing a quick command needs: its output is flushed, its files closed.
        os._exit(status)
    sys.exit(status)


def quick_exit_safe() -> bool:
    """Whether the process may end without the interpreter's teardown: only
    after a quickly parsed line (a known, short path), and only when no other
    thread runs and nothing that registers exit handlers was imported."""
    if not _quick:
        return False
    if {"logging", "concurrent.futures", "multiprocessing", "atexit"} & sys.modules.keys():
        return False
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1
