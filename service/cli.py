"""`framewire serve`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .config import PRECEDENCE, ConfigError, add_arguments, load_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the models of a repository over gRPC",
        description=(
            "Serve <repo>/<model>/<version>/model.fwa over gRPC, batching concurrent requests "
            "onto the GPU (or the CPU). Every setting can also come from the environment "
            "(FRAMEWIRE_<SETTING>) or a TOML file (--config), which may also set batching and the "
            "version policy per model in [model.<name>] tables. Precedence, highest first: "
            + ", ".join(PRECEDENCE) + " (a flag or variable applies to every model, model tables "
            "included). SIGTERM or SIGINT ends open streams with UNAVAILABLE once their frames in "
            "flight are answered, lets other in-flight calls finish (--drain-seconds) and exits 0."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser(
        "token",
        help="make a bearer token and its tokens-file entry",
        description="Print a new random token (give it to the client) and its entry for --tokens-file, "
        "which holds only the token's sha256. --append adds the entry to a tokens file.",
    )
    p.add_argument("--name", required=True, help="who the token is for ([A-Za-z0-9_.-])")
    p.add_argument("--scope", action="append", choices=["infer", "admin"], required=True,
                   help="infer: predictions and reads; admin: repository load/unload (repeatable)")
    p.add_argument("--model", action="append", default=[], help="limit infer to this model (repeatable)")
    p.add_argument("--append", metavar="FILE", help="append the entry to this tokens file")
    p.set_defaults(handler=_token)


def _token(args: argparse.Namespace) -> int:
    import os
    import re

    from .auth import new_token, parse_tokens, token_entry

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        print("framewire token: --name may hold letters, digits, '_', '.' and '-' (at most 64)", file=sys.stderr)
        return 2
    if args.append and os.path.exists(args.append):
        try:
            with open(args.append, encoding="utf-8") as fh:
                names = {principal.name for _, principal in parse_tokens(fh.read(), args.append)}
        except (OSError, ValueError) as exc:
            print(f"framewire token: {args.append} cannot take another entry: {exc}", file=sys.stderr)
            return 2
        if args.name in names:
            print(f"framewire token: {args.append} already has a token named {args.name!r}; pick another --name, "
                  "or delete that entry first to replace it (the server then refuses the old token)", file=sys.stderr)
            return 2
    token, digest = new_token()
    entry = token_entry(args.name, digest, sorted(set(args.scope)), args.model)
    if args.append:
        fd = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write("\n" + entry)
        print(f"# appended to {args.append}; the server reads it again within a second (or on SIGHUP)",
              file=sys.stderr)
    else:
        print(entry)
    print(f"token: {token}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"framewire serve: {exc}", file=sys.stderr)
        return 2
    from .logs import configure_logging
    from .server import serve

    configure_logging(config.log_level, config.log_format)

    from framewire.exporter import ArtifactError

    from .config import frontend_count
    from .frontend_peers import frontend_label
    from .frontends import serve_argv, supervise

    try:
        if frontend_label() is None and frontend_count(config) > 1:
            return supervise(config, serve_argv())
        return asyncio.run(serve(config))
    except (ConfigError, OSError, ArtifactError) as exc:
        print(f"framewire serve: {exc}", file=sys.stderr)
        return 2
