"""scripts/bench_target.py's app under gunicorn with geo_ws's worker, as a target of the
side-by-side benchmark (../shared/bench): the same ``/echo`` and ``/broadcast``.

    GEO_TARGET=scripts/bench_gunicorn_target.py GEO_NAME=geo_ws_gunicorn \\
        ../shared/bench/run_all.sh -R -t geo_ws_gunicorn -s connect

One worker (the harness pins the server to one core); gunicorn's access log off, as by
default. The process becomes gunicorn's master (SIGTERM stops it); the harness's idle
memory figure would be the master's, so compare rates only.
"""

import os
import sys
from pathlib import Path

os.execvp(
    sys.executable,
    [
        sys.executable, "-m", "gunicorn",
        "-k", "geo_ws.gunicorn.Worker", "-w", "1", "--worker-connections", "20000",
        "--log-level", "warning", "-b", f"127.0.0.1:{os.environ.get('PORT', '8765')}",
        "--chdir", str(Path(__file__).resolve().parent), "bench_target:app",
    ],
)  # fmt: skip
