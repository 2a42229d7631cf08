"""`framewire status` (one report) and `framewire top` (a live terminal view).

Both read GetServerStatus: GPU utilisation, memory, power and temperature,
and per model requests/s, images/s, p50/p99 latency, average batch size,
queue depth and errors/s over the last minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from google.protobuf import json_format

from .connection import add_connection_arguments, connection_from_args

STATE_NAMES = {1: "LOADING", 2: "READY", 3: "UNAVAILABLE", 4: "DRAINING"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="print a server's devices and models once",
                       description="Print a server's devices (GPU utilisation, memory, power) and models "
                                   "(state, throughput, latency, batch sizes, queue) once.")
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print GetServerStatus as JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    p.set_defaults(handler=_status)

    p = sub.add_parser("top", help="a live view of a server (q or Ctrl-C quits)",
                       description="A live terminal view of a server, refreshed every --interval seconds; "
                                   "q or Ctrl-C quits.")
    add_connection_arguments(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    p.set_defaults(handler=_top)


def _fetch(args: argparse.Namespace):
    from .client import Client

    with Client(connection_from_args(args), timeout=args.timeout, retries=0) as client:
        return client.server_status()


def _status(args: argparse.Namespace) -> int:
    from .client import FramewireError

    try:
        status = _fetch(args)
    except FramewireError as exc:
        print(f"framewire status: {args.server}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True), indent=2))
    else:
        print(render(status, server=args.server, width=_width()))
    return 0


def _width() -> int:
    import shutil

    return max(80, min(shutil.get_terminal_size((100, 30)).columns, 160))


def bar(fraction: float, width: int = 20) -> str:
    """`[#######.............]` for a fraction 0..1."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}"


def render(status, *, server: str = "", width: int = 100) -> str:
    """One frame of text from a GetServerStatusResponse."""
    lines = []
    state = "serving" if status.serving else "not serving"
    metrics = f", metrics :{status.metrics_port}" if status.metrics_port else ""
    lines.append(f"framewire {status.server_version} at {server}: {state}, up {_duration(status.uptime_seconds)}{metrics}")
    if status.device_fallback_reason:
        lines.append(f"  running on the CPU: {status.device_fallback_reason}")
    lines.append("")
    for device in status.devices:
        if not device.sampled:
            lines.append(f"{device.name:<8} {device.description or '-'}")
            continue
        memory = device.memory_used_bytes / device.memory_total_bytes if device.memory_total_bytes else 0.0
        lines.append(f"{device.name:<8} {device.description}  {device.temperature_celsius:.0f}C  "
                     f"{device.power_watts:.0f}/{device.power_limit_watts:.0f} W  "
                     f"SM {device.sm_clock_mhz:.0f} MHz")
        lines.append(f"  GPU {bar(device.utilization_percent / 100)} {device.utilization_percent:5.1f}%   "
                     f"MEM {bar(memory)} {_gib(device.memory_used_bytes)}/{_gib(device.memory_total_bytes)} GiB "
                     f"(framewire {_gib(device.process_memory_bytes)} GiB)")
    lines.append("")
    header = f"{'MODEL':<24} {'VER':>4} {'STATE':<11} {'DEVICE':<8} {'REQ/S':>7} {'IMG/S':>8} " \
             f"{'P50 ms':>7} {'P99 ms':>7} {'BATCH':>6} {'QUEUE':>6} {'ERR/S':>6}"
    lines.append(header)
    for m in status.models:
        lines.append(
            f"{m.model[:24]:<24} {m.version:>4} {STATE_NAMES.get(m.state, '?'):<11} {m.device[:8]:<8} "
            f"{m.requests_per_second:>7.1f} {m.images_per_second:>8.1f} {m.latency_p50_ms:>7.1f} "
            f"{m.latency_p99_ms:>7.1f} {m.average_batch_size:>6.1f} {m.queue_depth:>6d} {m.errors_per_second:>6.2f}"
        )
    if not status.models:
        lines.append("(no models)")
    return "\n".join(line[:width] for line in lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _top(args: argparse.Namespace) -> int:
    from .client import FramewireError

    if args.once:
        try:
            print(render(_fetch(args), server=args.server, width=_width()))
        except FramewireError as exc:
            print(f"framewire top: {args.server}: {exc}", file=sys.stderr)
            return 1
        return 0
    with _Keys() as keys:
        try:
            while True:
                try:
                    frame = render(_fetch(args), server=args.server, width=_width())
                except FramewireError as exc:
                    frame = f"framewire top: {args.server}: {exc}"
                sys.stdout.write("\x1b[H\x1b[2J" + frame.replace("\n", "\r\n") + "\r\n\r\n(q quits)")
                sys.stdout.flush()
                if keys.wait_for("q", args.interval):
                    break
        except KeyboardInterrupt:
            pass
    sys.stdout.write("\r\n")
    return 0


class _Keys:
    """Reads single key presses from a terminal (nothing when stdin is not one)."""

    def __enter__(self):
        self._saved = None
        if sys.stdin.isatty():
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved)

    def wait_for(self, key: str, seconds: float) -> bool:
        """Wait up to `seconds`; True when `key` was pressed."""
        if self._saved is None:
            time.sleep(seconds)
            return False
        import select

        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sys.stdin], [], [], remaining)
            if ready and sys.stdin.read(1).lower() == key:
                return True
        return False
