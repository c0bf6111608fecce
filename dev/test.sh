#!/usr/bin/env bash
# Install everything the tests need (Debian's rabbitmq-server included), then lint and run them.
# The tests start their own private RabbitMQ node; no system broker is used or started.
# Extra arguments go to pytest, e.g. ./dev/test.sh -k amqp -x
set -euo pipefail
cd "$(dirname "$0")/.."
ATASKS_EXTRAS=test
source dev/venv.sh
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  # Keep the package from starting a system-wide broker while it installs.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    trap 'as_root rm -f "$policy"' EXIT
  fi
  apt_install rabbitmq-server
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
