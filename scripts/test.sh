#!/usr/bin/env bash
# Install everything the test suite needs, then run it: the README's test command and
# what CI runs. Extra arguments go to pytest.
#
# Two sets, each in its own venv under .venvs/ (git-ignored), built from pyenv's
# interpreters (or pythonX.Y on PATH):
#   newest  Python 3.13, the newest releases of geo_ws's runtime dependencies, the test
#           tools of requirements/test.txt and the linters of requirements/tools.txt
#   oldest  Python 3.10 (the oldest that python_requires admits), every runtime
#           dependency at the minimum setup.cfg declares (requirements/oldest.txt,
#           as constraints), the same test tools
# A venv is reused while what it was built from is unchanged (a hash in .venvs/SET.stamp);
# delete .venvs/ to get the newest releases again. ruff, mypy and lint-imports run once,
# in the newest venv; then pytest runs in each set, newest first.
#
#   GEO_WS_TEST_SETS=newest bash scripts/test.sh -x tests/protocol
#
# GEO_WS_TEST_SETS: the sets to run, space- or comma-separated (default "newest oldest");
# the linters run with the newest set. Exit status: the first failing step's, pytest's
# included (both sets run even when the first fails).
set -euo pipefail
cd "$(dirname "$0")/.."

SETS="${GEO_WS_TEST_SETS:-newest oldest}"
SETS="${SETS//,/ }"
for set_name in $SETS; do
    case "$set_name" in
        newest | oldest) ;;
        *) echo "scripts/test.sh: GEO_WS_TEST_SETS: unknown set '$set_name' (newest, oldest)" >&2
           exit 2 ;;
    esac
done
wants() { [[ " $SETS " == *" $1 "* ]]; }

timings=()
step_started=0
step_name=""
step() {  # step NAME: ends the step before (its time is reported at the end), starts NAME
    local now=$SECONDS
    if [ -n "$step_name" ]; then
        timings+=("$(printf '%5ds  %s' $((now - step_started)) "$step_name")")
    fi
    step_name="$1"
    step_started=$now
    [ -n "$step_name" ] && printf '\n==> %s\n' "$step_name"
    return 0
}
# shellcheck disable=SC2317  # run by the EXIT trap
report() {
    step ""
    ((${#timings[@]})) && printf '\n==> time per step\n' && printf '%s\n' "${timings[@]}"
    return 0
}
trap report EXIT

# System packages the tests start themselves (chromium: tests/test_chat_browser.py;
# redis-server: tests/delivery/test_broker.py, tests/server/test_gunicorn.py).
# apt-get needs root.
step "apt packages"
APT_PACKAGES=(chromium redis-server)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# find_python X.Y: the path of a Python X.Y interpreter, from pyenv or PATH.
find_python() {
    local version="$1" candidates=() prefix candidate
    if command -v pyenv >/dev/null 2>&1 && prefix="$(pyenv prefix "$version" 2>/dev/null)"; then
        candidates+=("$prefix/bin/python$version")
    fi
    candidates+=("$(command -v "python$version" 2>/dev/null || true)")
    candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version")
    for candidate in "${candidates[@]}"; do
        if [ -x "$candidate" ] && [ "$("$candidate" -c \
            'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]
        then
            echo "$candidate"
            return 0
        fi
    done
    echo "scripts/test.sh: no Python $version found (tried 'pyenv prefix $version'," \
        "python$version on PATH, ${PYENV_ROOT:-$HOME/.pyenv}/versions/$version.*)." \
        "Install it, e.g. 'pyenv install $version', or choose another set with" \
        "GEO_WS_TEST_SETS." >&2
    return 1
}

# stamp SET PYTHON PIP_ARGS...: a hash of everything the venv of SET is built from.
stamp() {
    local set_name="$1" python="$2" arg
    shift 2
    {
        echo "recipe 1: $set_name: $*"
        "$python" -VV
        for arg in "$@"; do
            [ -f "$arg" ] && cat "$arg"
        done
        # setup.cfg's sections that install_requires, the extras and the entry points
        # are in (not [importlinter], say), and pyproject.toml's [build-system].
        awk '/^\[/ { keep = ($0 ~ /^\[options(\.[a-z_.]+)?\]$/) } keep' setup.cfg
        awk '/^\[/ { keep = ($0 == "[build-system]") } keep' pyproject.toml
        # setup.py and the C sources of the extensions it builds (into the source tree:
        # an editable install does not rebuild them when they change).
        cat setup.py
        find geo_ws -name '*.[ch]' -print0 | sort -z | xargs -0 -r cat
    } | sha256sum | cut -d' ' -f1
}

# venv SET X.Y PIP_ARGS...: .venvs/SET from Python X.Y with `pip install PIP_ARGS`,
# unless it was already built from the same inputs.
venv() {
    local set_name="$1" version="$2" python want dir=".venvs/$1"
    shift 2
    python="$(find_python "$version")"
    want="$(stamp "$set_name" "$python" "$@")"
    if [ -x "$dir/bin/python" ] && [ "$(cat ".venvs/$set_name.stamp" 2>/dev/null)" = "$want" ] \
        && "$dir/bin/python" -c "" 2>/dev/null; then
        echo "reusing $dir ($("$dir/bin/python" -V))"
        return 0
    fi
    rm -rf "$dir" ".venvs/$set_name.stamp"
    echo "building $dir from $python"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" >".venvs/$set_name.stamp"
}

if wants newest; then
    step "newest: venv (Python 3.13, newest runtime dependencies)"
    venv newest 3.13 -e '.[test]' -r requirements/test.txt -r requirements/tools.txt
    NEWEST=.venvs/newest/bin
    # Style, types and import contracts first: seconds, and the clearest messages.
    step "ruff check"
    "$NEWEST/python" -m ruff check geo_ws tests examples scripts
    step "ruff format --check"
    "$NEWEST/python" -m ruff format --check geo_ws tests examples scripts
    step "mypy"
    "$NEWEST/python" -m mypy
    step "lint-imports"
    if grep -q '^\[importlinter\]' setup.cfg; then
        "$NEWEST/lint-imports" --no-logo setup.cfg
    else
        echo "skipped: setup.cfg has no [importlinter] section (no import contracts yet)"
    fi
else
    echo "scripts/test.sh: the newest set is not selected: ruff, mypy and lint-imports skipped"
fi
if wants oldest; then
    step "oldest: venv (Python 3.10, runtime dependencies at their declared minimums)"
    python="$(find_python 3.10)"
    "$python" scripts/check_oldest.py
    venv oldest 3.10 -c requirements/oldest.txt -e '.[test]' -r requirements/test.txt
fi

status=0
for set_name in newest oldest; do
    wants "$set_name" || continue
    step "pytest: $set_name set"
    code=0
    PATH="$PWD/.venvs/$set_name/bin:$PATH" VIRTUAL_ENV="$PWD/.venvs/$set_name" \
        ".venvs/$set_name/bin/python" -m pytest "$@" || code=$?
    echo "pytest ($set_name set) exited with $code"
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$code
    fi
done
exit "$status"
