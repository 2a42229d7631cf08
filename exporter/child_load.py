"""Loading an artifact in a child process, under a time budget.

Rebuilding a network runs code the artifact steers: torch's graph
deserializer (sympy) and architecture builders with the artifact's
arguments. framewire checks what it can first, but a load that still takes
too long, or for ever, must not take its caller with it: a single C call
holding the GIL cannot be interrupted from another thread. `load_in_child`
hands the artifact's bytes to ``python -m framewire.exporter.child_load``,
which loads them (with `verify`, also runs the seeded forward pass) and
answers one JSON line on stdout. Past the budget the child's process group
is killed and the load fails with ArtifactLoadTimeoutError; the caller can
also stop it sooner through `watch` (a server shutting down).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Callable, ContextManager

from . import errors
from .errors import ArtifactError, ArtifactLoadTimeoutError
from .format import DEFAULT_MAX_ARTIFACT_BYTES

#: Default budget for loading one artifact, in seconds (--load-timeout-seconds).
DEFAULT_LOAD_TIMEOUT_SECONDS = 120.0


def overrun_message(seconds: float) -> str:
    """The reason given for a load that overran its budget."""
    return (
        f"loading took longer than its {seconds:g}-second budget (--load-timeout-seconds) and was stopped; "
        "the artifact may be hostile (e.g. a graph whose symbolic sizes never finish evaluating) or the "
        "model too large for the budget: re-export it with framewire, or raise the budget"
    )


def load_in_child(
    data: bytes,
    path: str,
    *,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    trusted_keys: str = "",
    require_signed: bool = False,
    verify: bool = False,
    watch: Callable[[subprocess.Popen], ContextManager] | None = None,
) -> dict:
    """Load `data` (the bytes of the artifact at `path`) in a child process
    within `timeout` seconds; returns its answer ({"name", "version",
    "report"}) or raises the ArtifactError the child raised, or
    ArtifactLoadTimeoutError. `watch(proc)` is entered while the child runs."""
    command = [
        sys.executable, "-m", "framewire.exporter.child_load", "--path", str(path), "--max-bytes", str(max_bytes),
        *(["--trusted-keys", trusted_keys] if trusted_keys else []),
        *(["--require-signed"] if require_signed else []),
        *(["--verify"] if verify else []),
    ]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    with watch(proc) if watch is not None else contextlib.nullcontext():
        try:
            out, _ = proc.communicate(data, timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise ArtifactLoadTimeoutError(overrun_message(timeout), path) from None
        except BrokenPipeError:  # the child died before reading everything
            out = proc.stdout.read() if proc.stdout else b""
            proc.wait()
    return _answer(out, proc.returncode, path)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started in its own session, and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _answer(out: bytes, code: int | None, path: str) -> dict:
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        raise ArtifactError(f"loading stopped before it finished (the loading process exited with code {code})",
                            path) from None
    if answer.get("ok"):
        return answer
    kind = getattr(errors, str(answer.get("error")), None)
    if not (isinstance(kind, type) and issubclass(kind, ArtifactError)):
        kind = ArtifactError
    raise kind(str(answer.get("reason", "loading failed")), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m framewire.exporter.child_load")
    p.add_argument("--path", required=True, help="the artifact's path (its bytes come on stdin)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_ARTIFACT_BYTES)
    p.add_argument("--trusted-keys", default="")
    p.add_argument("--require-signed", action="store_true")
    p.add_argument("--verify", action="store_true", help="also run the seeded forward pass")
    args = p.parse_args(argv)
    # stdout carries the answer; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    data = sys.stdin.buffer.read()
    try:
        answer = {"ok": True, **_load(args, data)}
    except ArtifactError as exc:
        answer = {"ok": False, "error": type(exc).__name__, "reason": exc.reason}
    except Exception as exc:  # anything else still ends as this artifact's failure, with its reason
        answer = {"ok": False, "error": "ArtifactError", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


def _load(args: argparse.Namespace, data: bytes) -> dict:
    from .loader import load_model

    if len(data) > args.max_bytes:
        raise errors.ArtifactTooLargeError(f"file is {len(data)} bytes, over the {args.max_bytes}-byte limit",
                                           args.path)
    if args.verify:
        from .export import verify_artifact

        loaded, report = verify_artifact(args.path, data=data)
    else:
        from .signing import TrustPolicy

        trust = TrustPolicy.from_directory(args.trusted_keys, args.require_signed) if args.trusted_keys else None
        loaded, report = load_model(args.path, data=data, max_bytes=args.max_bytes, trust=trust), {}
    return {"name": loaded.name, "version": loaded.version, "report": report}


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main())
