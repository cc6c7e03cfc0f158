"""Examples of everyday commands: the "examples:" of their -h, and the man
page's EXAMPLES (tools/gen_manpage.py).  Plain data, imported only to build
help: a primitive that imports nothing.  tests/test_examples.py runs them."""
from __future__ import annotations

# command -> lines of its -h's "examples:" (a "# " line says what the next does)
PER_COMMAND = {
    "new-image": (
        "stacko new-image base",
        "stacko new-image app-1.0 base          # stacked on base",
    ),
    "edit-image": (
        'cd "$(stacko edit-image base)" && tar -xpf /tmp/rootfs.tar; cd /',
        "stacko close-image base",
    ),
    "import-image": (
        "stacko import-image debian12 /srv/chroot/debian12     # a directory",
        "stacko import-image app-1.0 app.tar.gz debian12       # a rootfs tarball, on debian12",
        "skopeo copy docker://docker.io/library/alpine:3.19 oci-archive:alpine.tar",
        "stacko import-image alpine alpine.tar                # an OCI archive",
    ),
    "pull-image": (
        "stacko pull-image alpine docker.io/library/alpine:3.19",
        "stacko pull-image app-2.0 registry.example.com:5000/app:2.0 "
        "--authfile /etc/stacko/auth.json",
    ),
    "new-stackpoint": (
        "stacko new-stackpoint web app-1.0 --path /srv/web",
        "stacko mount-stackpoint web",
    ),
    "cutover-stackpoint": (
        "stacko cutover-stackpoint web app-2.0",
        "# a check on the host, in the stackpoint's directory",
        "stacko cutover-stackpoint web app-2.0 --check 'systemctl restart shop && "
        "curl -fsS http://127.0.0.1/health'",
        "# a check inside the new root: chroot, with nothing mounted on /proc, /dev, /sys",
        "stacko cutover-stackpoint web app-2.0 --check 'chroot \"$STACKO_DIR\" "
        "/usr/bin/app --self-test'",
    ),
    "fallback-stackpoint": (
        "stacko fallback-stackpoint web",
    ),
    "list-events": (
        "stacko list-events web --since 1h",
        "stacko list-events --since 2026-11-25 --json",
    ),
}

# (title, lines) for the man page: the everyday workflows, start to end.
WORKFLOWS = (
    ("Make an image by hand, stack another on it, and run it at a stackpoint "
     "(the seed workflow):", (
        "stacko new-image foundation-libs0.1",
        'cd "$(stacko edit-image foundation-libs0.1)"   # populate it',
        "cd /; stacko close-image foundation-libs0.1",
        "stacko new-image apps-1.0 foundation-libs0.1",
        'cd "$(stacko edit-image apps-1.0)"; cd /; stacko close-image apps-1.0',
        "stacko new-stackpoint system1fs apps-1.0",
        "stacko mount-stackpoint system1fs             # also after every reboot",
    )),
    ("Import a chroot directory and an application tarball stacked on it:", (
        "debootstrap bookworm /srv/chroot/debian12",
        "stacko import-image debian12 /srv/chroot/debian12",
        "stacko import-image apps-2.0 apps-2.0.tar.gz debian12",
    )),
    ("Pull an image from a registry that needs a login:", (
        "podman login --authfile /etc/stacko/auth.json registry.example.com",
        "stacko pull-image apps-2.1 registry.example.com/apps:2.1 "
        "--authfile /etc/stacko/auth.json",
    )),
    ("Cut over with a check, on the host and inside the new root, and fall back "
     "by hand later:", (
        "stacko cutover-stackpoint system1fs apps-2.1 --check 'systemctl is-active shop'",
        "stacko cutover-stackpoint system1fs apps-2.1 \\",
        "    --check 'chroot \"$STACKO_DIR\" /bin/sh -c \"test -x /usr/bin/app\"'",
        "stacko list-events system1fs",
        "stacko fallback-stackpoint system1fs",
    )),
    ("Keep the changes made at a stackpoint as an image, and tidy up:", (
        "stacko diff-stackpoint system1fs",
        "stacko commit-stackpoint system1fs apps-2.1-local",
        "stacko prune-stackpoint system1fs --keep 3",
    )),
)


def epilog(command: str) -> str | None:
    """The "examples:" of command's -h, or None."""
    lines = PER_COMMAND.get(command)
    if not lines:
        return None
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
