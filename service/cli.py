"""`framewire serve`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .config import ConfigError, add_arguments, load_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the models of a repository over gRPC",
        description=(
            "Serve <repo>/<model>/<version>/model.fwa over gRPC, batching concurrent requests "
            "onto the GPU (or the CPU). Every setting can also come from the environment "
            "(FRAMEWIRE_<SETTING>) or a TOML file (--config); flags win, then the environment, "
            "then the file. SIGTERM or SIGINT drains in-flight work and exits 0."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"framewire serve: {exc}", file=sys.stderr)
        return 2
    from .logs import configure_logging
    from .server import serve

    configure_logging(config.log_level, config.log_format)

    try:
        return asyncio.run(serve(config))
    except (ConfigError, OSError) as exc:
        print(f"framewire serve: {exc}", file=sys.stderr)
        return 2
