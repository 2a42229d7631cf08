"""`framewire serve`."""

from __future__ import annotations

import argparse
import asyncio
import logging
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
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .server import serve

    try:
        return asyncio.run(serve(config))
    except (ConfigError, OSError) as exc:
        print(f"framewire serve: {exc}", file=sys.stderr)
        return 2
