#!/usr/bin/env bash
# Installs the Debian tools that the tests run for real, when they are missing.
set -euo pipefail
here=$(dirname "$0")
want=()
# Each entry is TOOL or TOOL:PACKAGE when the Debian package is named otherwise.
# docker-registry (distribution 2.8), htpasswd and openssl: the registry that the
# pull and push tests start themselves, on 127.0.0.1, with TLS and users; podman
# for the interop tests and bench_registry; gpg, its agent, gpgv and prlimit for the
# signing tests.
for entry in umoci skopeo strace zstd systemd-analyze:systemd groff:groff-base mkfs.xfs:xfsprogs \
        htpasswd:apache2-utils openssl podman gpg:gnupg gpg-agent:gnupg gpgv prlimit:util-linux; do
    tool=${entry%%:*}
    command -v "$tool" >/dev/null 2>&1 || want+=("${entry#*:}")
done
if ! command -v docker-registry >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    # Its package would start a registry on every address (:5000): a policy-rc.d
    # keeps it from starting, and it stays disabled.  The tests start their own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    "$here/../tools/apt-install.sh" docker-registry
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
if [ ${#want[@]} -gt 0 ]; then
    # As another user the tests that need them skip or fail on their own: not fatal here.
    APT_INSTALL_NONROOT=0 "$here/../tools/apt-install.sh" "${want[@]}"
fi
# skopeo 1.18, which checks and makes sigstore signatures (Debian 12's cannot), in
# a Debian 13 chroot built once and cached (tests/test_sigstore_interop.py).
"$here/trixie-chroot.sh"
