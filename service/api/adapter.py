"""What both protocol servicers are built on: `ProtocolAdapter`."""

from __future__ import annotations

from ..config import ServeConfig
from ..devices import DevicePlan
from ..metrics import ServerMetrics
from ..repository import ModelRepository
from ..streams import StreamLimiter


class ProtocolAdapter:
    """The parts of the server a servicer serves from, the same for every
    protocol: the repository (models, as `ModelView`s), the settings, the
    device plan, the server's state (serving, started, ports), the metrics
    and the stream limiter. `api` labels a servicer's requests in metrics."""

    api = ""

    def __init__(self, repo: ModelRepository, config: ServeConfig, plan: DevicePlan, server_state,
                 metrics: ServerMetrics, streams: StreamLimiter):
        self.repo = repo
        self.config = config
        self.plan = plan
        self.state = server_state
        self.metrics = metrics
        self.streams = streams

    def track(self, model: str, version: int):
        """Count a request for `model` in this API's metrics (a context manager)."""
        return self.metrics.track(self.api, model, version, self.repo.knows)
