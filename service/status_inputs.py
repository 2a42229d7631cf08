"""What a server knows about itself at one moment: the input of the status document.

Plain values only (no server objects), so the document and its history can
be built from figures gathered in this process (`status_sampler.gather`)
or, later, from several processes' figures added together: every counter
here is cumulative and sums across processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gpu import GpuReading
from .host_figures import HostFigures, ProcessFigures
from .runner import WorkerStatus


@dataclass(frozen=True)
class ServerFigures:
    """The server as a whole."""

    version: str
    uptime_seconds: float
    serving: bool
    devices: tuple[str, ...]
    dtype: str
    device_fallback_reason: str = ""
    grpc_port: int = 0
    metrics_port: int = 0


@dataclass(frozen=True)
class ArtifactFigures:
    """Which artifact a version was loaded from, and who signed it."""

    path: str = ""
    weights_sha256: str = ""
    signer: str = ""  # the signing key's id, "" when unsigned
    signature_checked: bool = False  # verified against the server's trusted keys


@dataclass(frozen=True)
class VersionFigures:
    """One model version: its state and its counters since it loaded."""

    model: str
    version: int
    state: str  # LOADING, READY, UNAVAILABLE or DRAINING
    reason: str = ""
    device: str = ""
    task: str = ""
    #: Whether it has a served model (counters and rates below mean something).
    loaded: bool = False
    artifact: ArtifactFigures = field(default_factory=ArtifactFigures)
    queue_depth: int = 0
    queue_capacity: int = 0
    max_batch_size: int = 0
    requests_ok: int = 0
    requests_failed: int = 0
    images: int = 0
    batches: int = 0
    #: Successful requests whose queue / compute / preprocess times are summed below.
    timed_requests: int = 0
    queue_seconds_total: float = 0.0
    compute_seconds_total: float = 0.0
    preprocess_seconds_total: float = 0.0
    #: Executions by batch size since load.
    batch_sizes: dict[int, int] = field(default_factory=dict)
    #: Rates and percentiles over the last minute (the figures GetServerStatus carries).
    minute: dict[str, float] = field(default_factory=dict)
    #: Latency percentiles over the last few seconds (None: no request then).
    recent_latency_p50_ms: float | None = None
    recent_latency_p99_ms: float | None = None
    workers: tuple[WorkerStatus, ...] = ()
    #: The latency budget (BudgetStatus.as_dict()), None without one.
    budget: dict | None = None

    @property
    def key(self) -> str:
        """`model:version`, the version's name in the history."""
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status document is built from."""

    time: float  # unix seconds
    server: ServerFigures
    host: HostFigures
    versions: tuple[VersionFigures, ...] = ()
    #: Finished requests by model name and gRPC status code (requests for
    #: models the server does not have are counted under "_unknown").
    requests_by_code: dict[str, dict[str, int]] = field(default_factory=dict)
    gpus: tuple[GpuReading, ...] = ()
    #: Why there are no GPU figures ("" when there are).
    gpu_note: str = ""
    processes: tuple[ProcessFigures, ...] = ()
