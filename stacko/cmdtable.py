"""The command table: every command of the contract, its handler, help and
arguments, from which both the argparse parser (parser.py) and the quick
parse (cli.quick_args) are built, so that there is one grammar.

Argument checks run while parsing (type=), so that a bad name or number is a
usage error (exit status 2) before anything runs.
"""
from __future__ import annotations

from stacko.handlers import (CHECK_TIMEOUT, cmd_check, cmd_close_image, cmd_commit_stackpoint,
                             cmd_confirm_stackpoint, cmd_cutover_stackpoint, cmd_delete_image,
                             cmd_delete_stackpoint, cmd_delete_stackpoint_instance, cmd_df,
                             cmd_diff_stackpoint, cmd_edit_image, cmd_export_image,
                             cmd_fallback_stackpoint, cmd_generate_sigstore_key,
                             cmd_get_stackpoint_dir, cmd_import_image, cmd_is_stackpoint_mounted,
                             cmd_list_events, cmd_list_images, cmd_list_stackpoints,
                             cmd_mount_stackpoint, cmd_new_image, cmd_new_stackpoint,
                             cmd_new_stackpoint_instance, cmd_prune_stackpoint, cmd_pull_image,
                             cmd_push_image, cmd_set_stackpoint_instance, cmd_umount_stackpoint,
                             cmd_update_stackpoint, cmd_verify_image)

TYPE_CHECKING = False
if TYPE_CHECKING:   # aliases for annotations only, never evaluated at run time
    from collections.abc import Callable, Sequence

    from stacko.handlers import Args

    Handler = Callable[[Args], int]
    Arg = tuple[tuple[str, ...], dict[str, object]]


IMAGE_COMMANDS = ("new-image edit-image close-image delete-image list-images import-image "
                  "export-image pull-image push-image verify-image generate-sigstore-key")
POINT_COMMANDS = ("new-stackpoint delete-stackpoint mount-stackpoint umount-stackpoint "
                  "get-stackpoint-dir is-stackpoint-mounted cutover-stackpoint "
                  "fallback-stackpoint new-stackpoint-instance set-stackpoint-instance "
                  "delete-stackpoint-instance list-stackpoints list-events confirm-stackpoint "
                  "update-stackpoint")


UPKEEP_COMMANDS = "diff-stackpoint commit-stackpoint prune-stackpoint df check"


def arg(*flags: str, **kwargs: object) -> Arg:
    return flags, kwargs


def usage_error(message: str) -> Exception:
    """What a type= function raises for a bad value (argparse is loaded then)."""
    import argparse
    return argparse.ArgumentTypeError(message)


def name(text: str) -> str:
    """Names are checked while parsing, so that a bad one is a usage error (2)."""
    from stacko.errors import InvalidName
    from stacko.names import check_name
    try:
        return check_name(text)
    except InvalidName as e:
        raise usage_error(f"{e.message} ({e.hint})") from None


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
            epilog=IMPORT_FORMATS, quick=True),
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
            POLICY, REGISTRIES_D, *REGISTRY_OPTIONS, quick=True),
    Command("push-image", cmd_push_image,
            "push an image's stack to an OCI registry, one layer per image",
            described(NAME, "the image to push, with the images beneath it"), REF, COMPRESSION,
            *SIGNING_OPTIONS, *REGISTRY_OPTIONS, quick=True),
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
                help="say what would happen; change nothing"), quick=True),
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
