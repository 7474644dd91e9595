#!/usr/bin/env bash
# Install everything the test suite needs, then run it: the README's test command
# and what CI runs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests start themselves (chromium: tests/test_chat_browser.py;
# redis-server: tests/delivery/test_broker.py, tests/server/test_gunicorn.py).
APT_PACKAGES=(chromium redis-server)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python -m pip install -q -e '.[test]' -r requirements/test.txt -r requirements/tools.txt
# Style and types first: they take seconds and fail with the clearest messages.
python -m ruff check geo_ws tests examples scripts
python -m ruff format --check geo_ws tests examples scripts
python -m mypy
python -m pytest "$@"
