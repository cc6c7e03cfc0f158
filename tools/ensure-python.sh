#!/usr/bin/env bash
# On a fresh Debian machine: make sure python3 can make a venv (Debian ships
# venv and ensurepip in python3-venv) and that mount/umount/unshare exist.
set -euo pipefail
want=()
command -v python3 >/dev/null 2>&1 || want+=(python3)
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    want+=(python3-venv)
fi
for tool in mount unshare; do
    command -v "$tool" >/dev/null 2>&1 || want+=(util-linux)
done
[ ${#want[@]} -eq 0 ] && exit 0
exec "$(dirname "$0")/apt-install.sh" "${want[@]}"
