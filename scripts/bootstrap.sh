#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a fresh Debian machine (as root):
# the Debian packages redis-server and prometheus when missing, then a virtualenv with the
# project (and its compiled pass) installed in it. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# The compiled pass links libdeflate (it inflates the stored snapshots for /federate).
[ -f /usr/include/libdeflate.h ] || need_apt+=(libdeflate-dev)
# The status page is checked in a real browser (tests/deploy/test_status_page.py).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-dejavu-core)
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ constraints.txt -nt "$stamp" ] \
   || [ -n "$(find telemeter \( -name '*.pyx' -o -name '*.pxd' \) -newer "$stamp")" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi
