#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh machine: Debian packages (Fashion-MNIST, Chromium for
# the browser test), a virtual environment, and the project with all its extras. Safe to run again.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${2:-python3}
APT_PACKAGES=(dataset-fashion-mnist chromium)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "setup: warning: missing Debian packages ${missing[*]} (Fashion-MNIST data, Chromium for the browser" \
             "test); install them, or tests that need them are skipped with a reason." >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "setup: installing rocl-zoo with all extras into $VENV (first time: a few minutes)"
# pip's notes about this machine's unused local package folders are noise: keep every other line
"$VENV/bin/python" -m pip install -q -e ".[all]" 2> >(grep -v "^WARNING: Location '" >&2)
