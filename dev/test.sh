#!/usr/bin/env bash
# Install everything the tests need, then lint and run them. The AMQP tests run on two brokers:
# RabbitMQ 3.x (Debian's rabbitmq-server on this machine) and RabbitMQ 4.x (Debian sid's, in a
# root directory built once by dev/rabbitmq4.py with mmdebstrap and cached in
# ${XDG_CACHE_HOME:-~/.cache}/atasks/rabbitmq-sid; the tests run it through chroot, so as root).
# The tests start their own private RabbitMQ nodes; no system broker is used or started.
# Extra arguments go to pytest, e.g. ./dev/test.sh -k amqp -x
# Environment:
#   ATASKS_BROKERS=3 or =4     only the AMQP tests on that broker (default: 3,4, both; CI: both;
#                              with both, the 4.x tests run in a second pytest process beside)
#   ATASKS_RABBITMQ4_ROOT=DIR  the 4.x root to use (default: the cached one, built if missing)
#   ATASKS_SID_MIRROR=URL      a Debian mirror for building the 4.x root
set -euo pipefail
cd "$(dirname "$0")/.."
ATASKS_EXTRAS=test
source dev/venv.sh
remove_on_exit=()  # files made for this run only
pid4=  # the 4.x tests' pytest, below: stopped with this script
trap '[ -n "$pid4" ] && kill -INT "$pid4" 2>/dev/null
for made in "${remove_on_exit[@]}"; do as_root rm -f "$made"; done' EXIT
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  # Keep the package from starting a system-wide broker while it installs.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    remove_on_exit+=("$policy")
  fi
  apt_install rabbitmq-server
fi
if ! command -v openssl >/dev/null; then  # the TLS tests make their certificates with it
  apt_install openssl
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver  # the dashboard's browser test drives them (selenium)
fi
if [[ ${ATASKS_BROKERS:-3,4} == *4* && -z ${ATASKS_RABBITMQ4_ROOT:-} ]]; then
  if ! command -v mmdebstrap >/dev/null; then
    apt_install mmdebstrap
  fi
  root4=$(.venv/bin/python dev/rabbitmq4.py)
  export ATASKS_RABBITMQ4_ROOT=$root4
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
brokers=${ATASKS_BROKERS:-3,4}
if [[ $brokers != *3* || $brokers != *4* ]]; then
  exec .venv/bin/python -m pytest "$@"
fi
# Both brokers: the 4.x tests run in a second pytest process beside the rest (they mostly wait on
# brokers and servers), and their report follows the first one's.
log4=$(mktemp)
remove_on_exit+=("$log4")
ATASKS_BROKERS=4 ATASKS_BROKER_TESTS_ONLY=1 .venv/bin/python -m pytest -p no:cacheprovider "$@" \
  >"$log4" 2>&1 &
pid4=$!
status3=0
ATASKS_BROKERS=3 .venv/bin/python -m pytest "$@" || status3=$?
status4=0
wait "$pid4" || status4=$?
pid4=
echo "=================== the RabbitMQ 4.x tests (run beside the others) ==================="
cat "$log4"
echo "pytest exit status: RabbitMQ 3.x and the rest $status3, RabbitMQ 4.x $status4"
if [ "$status3" -ne 0 ]; then exit "$status3"; fi
exit "$status4"
