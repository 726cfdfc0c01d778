"""`rag serve`: run the HTTP API with uvicorn.

    rag serve                                   # 127.0.0.1:8000 (api.host, api.port)
    rag serve --host 0.0.0.0 --port 9000 --set generator.backend=hf --set generator.model=runs/merged
    RAG_API_KEY=secret RAG_ADMIN_KEY=admin-secret rag serve

Keys come from the environment variables named by api.api_key_env and api.admin_key_env; they are
never printed. Serving beyond loopback without an API key prints a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import Any

log = logging.getLogger("api")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_serve(args: argparse.Namespace) -> int:
    import faulthandler

    import uvicorn

    from api.app import create_app
    from api.protocol import server_options
    from rag.cli_common import config_from_args

    # A fatal signal (SIGSEGV, SIGBUS from a damaged memory-mapped file, ...) writes every thread's Python
    # stack to stderr before the process dies: never a dead server with nothing logged (docs/api.md).
    faulthandler.enable(all_threads=True)

    config = config_from_args(args)
    host = args.host or config.api.host
    port = args.port if args.port is not None else config.api.port
    if not _is_loopback(host) and not os.environ.get(config.api.api_key_env):
        print(
            f"warning: serving on {host} without an API key; set {config.api.api_key_env} to require one",
            file=sys.stderr,
        )
    level = "debug" if args.verbose else args.log_level
    logging.getLogger("api").setLevel(level.upper())
    app = create_app(config)
    print(f"serving on http://{host}:{port} (docs at /docs; ready when /readyz says so)", file=sys.stderr)
    # One process: the pipeline (index, embedder, model) is loaded once and shared by the thread pool.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
        **server_options(config),
    )
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "serve", parents=[common], help="run the HTTP API (FastAPI + uvicorn); see docs/api.md"
    )
    p.add_argument("--host", default=None, help="interface to bind (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: api.port, 8000)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    p.set_defaults(func=_cmd_serve)
