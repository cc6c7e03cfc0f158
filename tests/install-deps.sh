#!/usr/bin/env bash
# Installs the Debian tools that the tests run for real, when they are missing.
set -euo pipefail
want=()
# Each entry is TOOL or TOOL:PACKAGE when the Debian package is named otherwise.
for entry in umoci skopeo strace zstd systemd-analyze:systemd groff:groff-base mkfs.xfs:xfsprogs; do
    tool=${entry%%:*}
    command -v "$tool" >/dev/null 2>&1 || want+=("${entry#*:}")
done
[ ${#want[@]} -eq 0 ] && exit 0
# As another user the tests that need them skip or fail on their own: not fatal here.
APT_INSTALL_NONROOT=0 exec "$(dirname "$0")/../tools/apt-install.sh" "${want[@]}"
