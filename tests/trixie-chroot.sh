#!/usr/bin/env bash
# Builds, once, a Debian 13 (trixie) chroot with skopeo 1.18 and cosign 2.5 for
# the sigstore interop tests: Debian 12 builds skopeo with sigstore disabled, so
# only a newer skopeo can check stacko's sigstore signatures and make its own.
#   tests/trixie-chroot.sh [DIR]      (default: $STACKO_TRIXIE or
#                                      /var/cache/stacko-tests/trixie)
# DIR/.stacko-ready marks a finished chroot: a later run does nothing.  The
# chroot is made beside DIR and renamed into place once the tools run in it, so
# an interrupted build leaves no half chroot behind for the tests to trip on.
# A chroot of an earlier version of this script (without a tool) is copied and
# completed the same way, without a new debootstrap.
# The mirror is the one this machine's apt uses ($STACKO_DEBIAN_MIRROR wins).
# Root only; as another user it says so and exits 0 (the tests then skip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-${STACKO_TRIXIE:-/var/cache/stacko-tests/trixie}}
stamp=$dir/.stacko-ready
tools="skopeo cosign"
ready() {
    [ -e "$stamp" ] || return 1
    for tool in $tools; do
        [ -x "$dir/usr/bin/$tool" ] || return 1
    done
}
if ready; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "stacko: the sigstore interop tests need a trixie chroot: run $0 as root" >&2
    exit 0
fi

mirror() {
    # The first Debian (not security) URI of apt's sources, deb822 or one-line.
    if [ -n "${STACKO_DEBIAN_MIRROR:-}" ]; then
        echo "$STACKO_DEBIAN_MIRROR"
        return
    fi
    local found
    found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
                /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                   -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' |
            grep -E '/debian/?$' | grep -v -- '-security' | head -n 1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

command -v debootstrap >/dev/null 2>&1 || "$here/../tools/apt-install.sh" debootstrap

parent=$(dirname "$dir")
mkdir -p "$parent"
# One build at a time (two `make test` at once): the second waits, then finds it done.
exec 9>"$parent/.$(basename "$dir").lock"
flock 9
if ready; then
    exit 0
fi

work=$dir.new
cleanup() {
    # Nothing is mounted in $work outside the private namespaces below; only files remain.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
cleanup
url=$(mirror)
log=$parent/$(basename "$dir").log
if [ -e "$stamp" ]; then
    echo "stacko: adding to the Debian 13 chroot in $dir: $tools (once)" >&2
    cp -a "$dir" "$work"
    rm -f "$work/.stacko-ready"
else
    echo "stacko: building a Debian 13 chroot with $tools in $dir from $url (once)" >&2
    ok=0
    for attempt in 1 2 3; do
        # In a private mount namespace: whatever debootstrap mounts in $work (/proc)
        # goes with it, even when it is killed, and rm never meets a mount there.
        if unshare -m --propagation private \
                debootstrap --variant=minbase trixie "$work" "$url" >"$log" 2>&1; then
            ok=1
            break
        fi
        echo "stacko: debootstrap failed (attempt $attempt), see $log" >&2
        cleanup
        sleep $((attempt * 5))
    done
    [ "$ok" = 1 ] || { tail -n 20 "$log" >&2; exit 1; }
fi

# apt inside: the host's proxy settings and resolver, no services started.
cp -L /etc/resolv.conf "$work/etc/resolv.conf" 2>/dev/null || true
for conf in /etc/apt/apt.conf.d/*; do
    if grep -qi 'proxy' "$conf" 2>/dev/null; then
        cp "$conf" "$work/etc/apt/apt.conf.d/"
    fi
done
printf '#!/bin/sh\nexit 101\n' > "$work/usr/sbin/policy-rc.d"
chmod 755 "$work/usr/sbin/policy-rc.d"
# In a private mount namespace: /proc and /dev mounted there vanish with it.
inside() {
    unshare -m --propagation private sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
        exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
            ${http_proxy:+http_proxy="$http_proxy"} ${https_proxy:+https_proxy="$https_proxy"} \
            ${no_proxy:+no_proxy="$no_proxy"} "$@"' sh "$work" "$@"
}
ok=0
for attempt in 1 2 3; do
    if inside apt-get update -qq >>"$log" 2>&1 &&
       inside apt-get install -y -qq --no-install-recommends $tools >>"$log" 2>&1; then
        ok=1
        break
    fi
    echo "stacko: apt-get install $tools in the chroot failed (attempt $attempt), see $log" >&2
    sleep $((attempt * 5))
done
[ "$ok" = 1 ] || { tail -n 20 "$log" >&2; exit 1; }
inside apt-get clean >/dev/null 2>&1 || true
version=$(inside skopeo --version)
inside cosign version >/dev/null 2>&1 || { echo "stacko: cosign does not run in $work" >&2; exit 1; }
echo "$version" >&2
# The previous chroot (an older stamp, or a broken one) goes only once the new one works.
if [ -e "$dir" ]; then
    rm -rf --one-file-system "$dir"
fi
echo "$version" > "$work/.stacko-ready"
mv "$work" "$dir"
trap - EXIT
