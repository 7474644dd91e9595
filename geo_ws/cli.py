"""The ``geo-ws`` command: ``geo-ws run module:app [--host H] [--port P]``, and
``geo-ws load URL ...`` (load tests: see :mod:`geo_ws.load`).

The process is monkey-patched before the app is imported, so the app's blocking
calls (sockets, ``time.sleep``, database drivers) cooperate with gevent.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from .load import command as load  # noqa: E402
from .server.builtin import run  # noqa: E402

__all__ = ["load_app", "main"]


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (``module`` alone means ``module:app``).

    Raises:
        SystemExit: with a readable message when the module or attribute is missing,
            and with the traceback when an import inside the module fails (as ``flask
            run`` does).
    """
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        parts = module_name.split(".")
        named = {".".join(parts[: n + 1]) for n in range(len(parts))}
        if isinstance(error, ModuleNotFoundError) and error.name in named:
            raise SystemExit(f"geo-ws: cannot import {module_name!r}: {error}") from None
        # The module exists; an import inside it failed: where is what matters.
        raise SystemExit(
            f"geo-ws: while importing {module_name!r}, an import failed:\n\n"
            + traceback.format_exc()
        ) from None
    try:
        return getattr(module, attribute or "app")
    except AttributeError:
        raise SystemExit(
            f"geo-ws: {module_name!r} has no attribute {attribute or 'app'!r}"
        ) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geo-ws`` console script."""
    parser = argparse.ArgumentParser(prog="geo-ws", description="Serve Flask apps with WebSockets.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("run", help="serve a Flask app (HTTP and WebSocket on one port)")
    serve.add_argument("app", help="module:app, e.g. examples.robyn_tour:app")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000; 0: any)")
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        help="seconds that closing handshakes may take at shutdown (10)",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        help="seconds a client may take to send a request's headers (10)",
    )
    load.add_arguments(
        commands.add_parser(
            "load",
            help="load-test a WebSocket endpoint",
            description=load.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    args = parser.parse_args(argv)
    if args.command == "load":
        sys.exit(load.command(args))
    run(
        load_app(args.app),
        args.host,
        args.port,
        graceful_timeout=args.graceful_timeout,
        handshake_timeout=args.handshake_timeout,
    )


if __name__ == "__main__":
    main()
