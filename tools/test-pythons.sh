#!/usr/bin/env bash
# `make test`'s run under every other Python from 3.9 to 3.13 that this machine
# has (python3.X on PATH, or under pyenv): each gets a venv of its own with the
# runtime and test dependencies, then the unit tests that do not mount, the
# import tests and one real mount cycle (the seed example) run under it.
# STACKO_MIN_PYTHONS (CI sets 2): fail when fewer versions besides the default ran.
set -uo pipefail
cd "$(dirname "$0")/.."
default=$1          # the venv's interpreter, already tested by the main run
shift
tests=(tests/test_imports.py tests/test_cli.py tests/test_messages.py tests/test_state.py
       tests/test_run.py tests/test_compression.py tests/test_seed.py)
default_version=$("$default" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
find_python() {     # prints an interpreter of version $1 that really runs, or nothing
    local v=$1 c
    for c in "python$v" "$HOME"/.pyenv/versions/"$v".*/bin/"python$v" /usr/bin/"python$v" \
             /usr/local/bin/"python$v"; do
        if "$c" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            command -v "$c"
            return
        fi
    done
}
base=${TMPDIR_BASE:-/tmp/stacko-pythons.$$}
mkdir -p "$base"
ran=() failed=()
for v in 3.9 3.10 3.11 3.12 3.13; do
    [ "$v" = "$default_version" ] && continue
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        echo "test-pythons: no Python $v here, skipped" >&2
        continue
    fi
    venv=.venv-py$v
    if [ ! -e "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
        rm -rf "$venv"
        "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip &&
            "$venv/bin/python" -m pip install -q '.[test]' && touch "$venv/.installed" || {
                echo "test-pythons: cannot set up a venv for Python $v" >&2
                failed+=("$v"); continue; }
    fi
    echo "test-pythons: Python $v ($py)" >&2
    # The checkout, not the installed copy: the cwd is first on sys.path.
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider "--basetemp=$base/py$v" "${tests[@]}"; then
        ran+=("$v")
    else
        failed+=("$v")
    fi
done
[ -n "${TMPDIR_BASE:-}" ] || rm -rf "$base"
echo "test-pythons: passed under ${ran[*]:-none}${failed:+; FAILED under ${failed[*]}} (besides $default_version)" >&2
[ ${#failed[@]} -eq 0 ] || exit 1
if [ ${#ran[@]} -lt "${STACKO_MIN_PYTHONS:-0}" ]; then
    echo "test-pythons: only ${#ran[@]} Pythons besides $default_version ran; ${STACKO_MIN_PYTHONS} wanted" >&2
    exit 1
fi
