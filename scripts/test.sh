#!/usr/bin/env bash
# Install everything the tests need (memcached included) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k memcached -x
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v memcached >/dev/null 2>&1 && [ ! -x /usr/bin/memcached ]; then
    echo "Installing memcached (Debian package)..."
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq memcached >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"

python3 -m ruff check nbcache tests bench
python3 -m ruff format --check nbcache tests bench
python3 -m mypy
# pytest exits 5 when it collected no test: set -e makes that a failure, as it should be.
python3 -m pytest "$@"
