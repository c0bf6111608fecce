# Sourced by dev/run.sh and dev/test.sh: make ./.venv with Python 3.11+ and install atasks into
# it, with the extras named in $ATASKS_EXTRAS. Works on a fresh Debian machine.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "atasks needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${ATASKS_EXTRAS:+[$ATASKS_EXTRAS]}"
if [[ ${ATASKS_EXTRAS:-} == *test* ]]; then  # the developer tools: ruff, mypy, build
  .venv/bin/python -m pip install -q --disable-pip-version-check -r dev/requirements.txt
fi
