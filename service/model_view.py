"""What a servicer may see of a served model version: `ModelView`.

The servicers (service/api/) convert protocol messages and pick status
codes; they neither change a model nor know how it runs. They get a model
from the repository (`ModelRepository.get` / `lease`) as this read-only
view: its identity and description (GetModel, ModelMetadata, ModelConfig),
its batching settings, its live figures (queue depth, statistics), its task
handler (which writes results into protocol messages) and `predict`. How
the model runs (runner, batcher, worker processes, configuration) stays
behind it, so those can change without touching either API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

from framewire.exporter import format as fmt
from framewire.v1 import artifact_pb2 as apb

from .domain import ImageInput, PredictParams, Served

if TYPE_CHECKING:
    from .model import ServedModel
    from .stats import ModelStats
    from .tasks.base import TaskHandler


class ModelView:
    """A read-only view of one served model version (see the module doc)."""

    __slots__ = ("_model",)

    def __init__(self, model: "ServedModel"):
        self._model = model

    def __repr__(self) -> str:
        return f"ModelView({self.name!r}, version={self.version})"

    # ------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def version(self) -> int:
        return self._model.version

    @property
    def task(self) -> str:
        """The task's name, e.g. "classification"."""
        return self._model.task

    @property
    def device(self) -> str:
        """Device(s) it runs on, e.g. "cpu" or "cuda:0,cuda:1"."""
        return self._model.device

    @property
    def serving_dtype(self) -> str:
        """The dtype the network runs in."""
        return self._model.dtype_name

    @property
    def handler(self) -> "TaskHandler":
        """The task handler: the model's inputs and outputs on each protocol."""
        return self._model.handler

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._model.labels)

    # --------------------------------------------------------- description

    @property
    def input_spec(self) -> apb.InputSpec:
        """The artifact's input spec (a copy)."""
        return _copy(self._model.artifact.input)

    @property
    def preprocessing(self) -> apb.Preprocessing:
        """The artifact's preprocessing (a copy)."""
        return _copy(self._model.artifact.preprocessing)

    @property
    def outputs(self) -> list[apb.TensorSpec]:
        """The artifact's output specs (copies)."""
        return [_copy(o) for o in self._model.artifact.output.outputs]

    @property
    def architecture(self) -> str:
        """The architecture, as `framewire inspect` names it."""
        return fmt.architecture_summary(self._model.artifact)

    @property
    def parameter_count(self) -> int:
        return self._model.artifact.parameter_count

    @property
    def weights_sha256(self) -> str:
        """The weights' sha256, hex."""
        return self._model.artifact.weights_sha256.hex()

    @property
    def program_sha256(self) -> str:
        """A graph artifact's program sha256, hex ("" for a registry architecture)."""
        artifact = self._model.artifact
        return artifact.graph.program_sha256.hex() if artifact.WhichOneof("architecture") == "graph" else ""

    @property
    def signing_key_id(self) -> str:
        """The key that signed the artifact ("" when unsigned)."""
        signature = self._model.artifact.signature
        return signature.key_id if signature.signature else ""

    # ------------------------------------------------------------ batching

    @property
    def max_batch_size(self) -> int:
        return self._model.max_batch_size

    @property
    def instances_per_device(self) -> int:
        return self._model.config.instances_per_device

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        return tuple(self._model.config.preferred_batch_sizes)

    @property
    def max_queue_delay_us(self) -> int:
        return self._model.config.max_queue_delay_us

    @property
    def version_policy(self) -> str:
        """The model's --version-policy, e.g. "latest:1"."""
        return self._model.config.version_policy

    # --------------------------------------------------------------- live

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch now."""
        return self._model.queue_depth

    @property
    def stats(self) -> "ModelStats":
        """Requests, images and batches since load (read them; the model records them)."""
        return self._model.stats

    async def predict(self, images: list[ImageInput], params: PredictParams, *, deadline: float | None = None,
                      priority: int = 0, latest_of: Hashable = None) -> Served:
        """Check, batch, decode, run and answer `images`, answers in order.
        `latest_of`: a stream's key; with a latency budget a newer request of
        the same key supersedes this one while it waits for a batch."""
        return await self._model.predict(images, params, deadline=deadline, priority=priority, latest_of=latest_of)


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy
