"""The `framewire` command: one subcommand per task.

Subcommands import what they need when they run, so `framewire predict` on a
client machine never imports torch.
"""

from __future__ import annotations

import argparse
import sys

from framewire import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framewire",
        description="Serve PyTorch vision models over gRPC from pickle-free artifacts.",
    )
    parser.add_argument("--version", action="version", version=f"framewire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from framewire.client_cli import add_commands as add_client_commands
    from framewire.exporter.cli import add_commands as add_exporter_commands
    from framewire.service.cli import add_commands as add_service_commands
    from framewire.status_cli import add_commands as add_status_commands
    from framewire.tools_cli import add_commands as add_tool_commands

    add_exporter_commands(sub)
    add_service_commands(sub)
    add_client_commands(sub)
    add_status_commands(sub)
    add_tool_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
