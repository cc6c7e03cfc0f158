#!/usr/bin/env bash
# apt-get install the Debian packages named, as root; as another user, say
# what to install and exit with the status given in $APT_INSTALL_NONROOT (1).
set -euo pipefail
[ $# -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "stacko: install $* first (as root: apt-get install $*)" >&2
    exit "${APT_INSTALL_NONROOT:-1}"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "$@" >/dev/null
