#!/usr/bin/env bash
# Installs the Debian tools that the tests run for real, when they are missing.
set -euo pipefail
want=()
# Each entry is TOOL or TOOL:PACKAGE when the Debian package is named otherwise.
for entry in umoci skopeo strace zstd systemd-analyze:systemd groff:groff-base; do
    tool=${entry%%:*}
    command -v "$tool" >/dev/null 2>&1 || want+=("${entry#*:}")
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "tests: missing ${want[*]} (install them as root, or run the tests as root)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${want[@]}" >/dev/null
