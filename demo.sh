#!/usr/bin/env bash
# The seed README's example, end to end, in a scratch root: `make demo`.
# Run as root; the Makefile starts it in a private mount namespace, so
# nothing it mounts is seen outside or outlives it.
set -euo pipefail
STACKO=${1:-stacko}
export STACKO_ROOT=$(mktemp -d /tmp/stacko-demo.XXXXXX)
cleanup() {   # unmount whatever is left under the scratch root, then remove it
    awk -v r="$STACKO_ROOT/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r mp; do umount -l "$mp"; done
    rm -rf "$STACKO_ROOT"
}
trap cleanup EXIT

# Bold headings on a terminal only: piped or logged, the output stays plain text.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s# %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ stacko %s\n' "$*" >&2; "$STACKO" "$@"; }
show() { printf '  %s:\n' "$1"; (cd "$1" && find . -mindepth 1 -type f | sort | while read -r f; do
    printf '    %-28s %s\n' "${f#./}" "$(head -c 60 "$f")"; done); }

say "create and populate a new image 'foundation-libs0.1' (root: $STACKO_ROOT)"
run new-image foundation-libs0.1
# edit-image mounts the image and prints where: what is written there lands in
# the image's own layer, until close-image.
dir=$(run edit-image foundation-libs0.1); echo "$dir"
mkdir -p "$dir/lib" "$dir/etc"
echo "libfoundation 0.1" > "$dir/lib/libfoundation.so"
echo "greeting=hello" > "$dir/etc/app.conf"
run close-image foundation-libs0.1

say "create image 'apps-1.0', stacked on 'foundation-libs0.1'"
run new-image apps-1.0 foundation-libs0.1
dir=$(run edit-image apps-1.0); echo "$dir"
mkdir -p "$dir/bin"; echo "app version 1.0" > "$dir/bin/app"
run close-image apps-1.0

say "a stackpoint 'system1fs' with a new instance of 'apps-1.0', mounted"
run new-stackpoint system1fs apps-1.0
sp=$(run mount-stackpoint system1fs); echo "$sp"
echo "written while on 1.0" > "$sp/etc/local-change"
show "$sp"

say "<reboot>: every mount is gone, the state on disk stays"
umount "$sp"
run is-stackpoint-mounted system1fs || echo "(exit $?: not mounted)"
run mount-stackpoint system1fs
show "$sp"

say "time to upgrade: image 'apps-2.0', imported from a build directory, and a cutover"
build=$STACKO_ROOT.build; trap 'rm -rf "$build"; cleanup' EXIT
mkdir -p "$build/bin"; echo "app version 2.0" > "$build/bin/app"
# The other way an image gets its files: import-image copies a directory (a
# chroot, a build tree), a rootfs tarball or an OCI image as the new layer.
run import-image apps-2.0 "$build" foundation-libs0.1
show "$build"
run cutover-stackpoint system1fs apps-2.0
show "$sp"

say "something is wrong: fall back to the previous instance, with its changes"
run fallback-stackpoint system1fs
show "$sp"

say "the images and the stackpoint"
run list-images --tree
run list-stackpoints
run umount-stackpoint system1fs
