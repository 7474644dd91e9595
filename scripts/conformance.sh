#!/usr/bin/env bash
# RFC 6455 conformance: run the Autobahn|Testsuite fuzzing client (../shared/autobahn)
# against geo_ws's echo endpoint (scripts/bench_target.py) and fail on any FAILED or
# NON-STRICT verdict, any unclean closing behaviour, or any case that did not run
# (scripts/conformance_verdict.py; a case whose only fault is Autobahn's early closing
# handshake timeout runs once more, see there).
#
#   bash scripts/conformance.sh [CASES] [OUTDIR]
#
# CASES is a JSON list of case patterns (default: all 517, permessage-deflate's 12.* and
# 13.* included: the echo endpoint enables compression); OUTDIR keeps the reports
# (default: a temp dir). A case may take AB_CASE_TIMEOUT seconds (default here 300: the
# 128 KiB compressed cases take up to a minute on a busy 2-core machine).
#
# Needs the shared tools beside the checkout (../shared/autobahn, or AUTOBAHN=DIR), and
# a Python with geo_ws installed: GEO_WS_PYTHON, else the newest set's venv that
# scripts/test.sh builds (.venvs/newest), else python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

AUTOBAHN="${AUTOBAHN:-../shared/autobahn}"
if [ ! -f "$AUTOBAHN/run.sh" ]; then
    cat >&2 <<EOF
scripts/conformance.sh: no Autobahn|Testsuite runner at $AUTOBAHN/run.sh.
It is one of the project's shared tools (shared/autobahn: run.sh, setup.sh and the
Python 3 port of the testsuite), which lie beside the checkout as ../shared. Put a copy
of the shared folder next to this repository, or point AUTOBAHN at its autobahn folder:
    AUTOBAHN=/path/to/shared/autobahn bash scripts/conformance.sh
(On first use its setup.sh installs the testsuite from PyPI into a venv under /tmp.)
EOF
    exit 1
fi
if [ -z "${GEO_WS_PYTHON:-}" ]; then
    GEO_WS_PYTHON=python
    if [ -x .venvs/newest/bin/python ]; then
        GEO_WS_PYTHON=.venvs/newest/bin/python
    fi
fi
if ! "$GEO_WS_PYTHON" -c "import geo_ws, flask" 2>/dev/null; then
    echo "scripts/conformance.sh: $GEO_WS_PYTHON cannot import geo_ws: run" \
        "'bash scripts/test.sh' first (it builds .venvs/newest), or 'pip install -e .'," \
        "or set GEO_WS_PYTHON to a Python that has it." >&2
    exit 1
fi
CASES="${1:-[\"*\"]}"
export AB_CASE_TIMEOUT="${AB_CASE_TIMEOUT:-300}"
OUTDIR="${2:-$(mktemp -d /tmp/geo_ws-autobahn.XXXXXX)}"
mkdir -p "$OUTDIR"
PORT="$("$GEO_WS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

PORT="$PORT" COMPRESSION=deflate "$GEO_WS_PYTHON" scripts/bench_target.py >"$OUTDIR/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$GEO_WS_PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.1)" 2>/dev/null && break
    sleep 0.1
done

bash "$AUTOBAHN/run.sh" "ws://127.0.0.1:$PORT/echo" geo_ws "$OUTDIR" "$CASES" | tail -n 25
verdict=0
"$GEO_WS_PYTHON" scripts/conformance_verdict.py "$OUTDIR" || verdict=$?
if [ "$verdict" -eq 2 ]; then
    bash "$AUTOBAHN/run.sh" "ws://127.0.0.1:$PORT/echo" geo_ws "$OUTDIR/retry" \
        "$(cat "$OUTDIR/retry-cases.json")" | tail -n 3
    "$GEO_WS_PYTHON" scripts/conformance_verdict.py "$OUTDIR" "$OUTDIR/retry"
else
    exit "$verdict"
fi
