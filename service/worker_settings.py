"""The settings a model instance needs next to its device: one typed message.

Built once per model version from the server's `ServeConfig`
(`WorkerSettings.from_config`); a worker process receives it in its `load`
message (`to_json` / `from_json`, validated on both sides), and the
in-process runner uses the same object. Nothing re-declares the server's
flags: a new setting the device side needs is one field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from framewire.exporter.format import DEFAULT_MAX_ARTIFACT_BYTES

from .config import ServeConfig

DTYPES = ("float32", "float16", "bfloat16")
#: auto: torchvision's decoder (nvJPEG) on CUDA, PIL on CPU threads otherwise.
DECODERS = ("auto", "pil", "torchvision")


class SettingsError(ValueError):
    """A settings message is malformed; the message names the field."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything that loads and runs one model version on one device.

    `model_id` names the model in a worker's messages (a worker may host
    several). `cpu_threads` and `decode_threads` (0: auto) and the logging
    fields apply to the whole worker process, from the first model it loads.
    """

    model_id: str
    artifact: str
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = True
    cuda_graphs: bool = False
    cpu_threads: int = 0
    decode_threads: int = 0
    #: Niceness the front end gives the worker process (0: none).
    nice: int = 0
    decoder: str = "auto"
    jpeg_draft: bool = False
    max_image_pixels: int = 40_000_000
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    trusted_keys: str = ""
    require_signed: bool = False
    #: sha256 of the file the version was loaded from; a worker refuses any other bytes.
    expect_sha256: str = ""
    log_level: str = "info"
    log_format: str = "text"

    @classmethod
    def from_config(cls, config: ServeConfig, *, model_id: str, artifact: str, device: str, dtype: str,
                    expect_sha256: str = "") -> "WorkerSettings":
        """The settings of one model version (its TOML overrides already applied to `config`)."""
        return cls(
            model_id=model_id, artifact=str(artifact), device=device, dtype=dtype, expect_sha256=expect_sha256,
            channels_last=config.channels_last, cuda_graphs=config.cuda_graphs, cpu_threads=config.cpu_threads,
            decode_threads=config.decode_threads, nice=config.worker_nice, jpeg_draft=config.jpeg_draft,
            max_image_pixels=config.max_image_pixels, max_artifact_bytes=config.max_artifact_bytes,
            trusted_keys=config.trusted_keys, require_signed=config.require_signed,
            log_level=config.log_level, log_format=config.log_format,
        ).validate()

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def resolved_decoder(self) -> str:
        """"pil" or "torchvision", with auto resolved for the device."""
        if self.decoder != "auto":
            return self.decoder
        return "torchvision" if self.on_cuda else "pil"

    def validate(self) -> "WorkerSettings":
        """Check every value; raise SettingsError naming the bad one."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise SettingsError(f"worker setting {name}={getattr(self, name)!r}: {what}")

        for f in fields(self):
            value = getattr(self, f.name)
            kind = _kind(f)
            if kind is bool and not isinstance(value, bool) or kind is int and (
                    isinstance(value, bool) or not isinstance(value, int)) or kind is str and not isinstance(value, str):
                raise SettingsError(f"worker setting {f.name}={value!r}: expected {kind.__name__}")
        need(bool(self.model_id), "model_id", "must name the model")
        need(bool(self.artifact), "artifact", "must be an artifact path")
        need(self.device == "cpu" or self.device.startswith("cuda"), "device", "use cpu or cuda:N")
        need(self.dtype in DTYPES, "dtype", f"use one of {', '.join(DTYPES)}")
        need(self.decoder in DECODERS, "decoder", f"use one of {', '.join(DECODERS)}")
        for name in ("cpu_threads", "decode_threads"):
            need(getattr(self, name) >= 0, name, "must be 0 (auto) or more")
        for name in ("max_image_pixels", "max_artifact_bytes"):
            need(getattr(self, name) >= 1, name, "must be positive")
        need(0 <= self.nice <= 19, "nice", "must be between 0 and 19")
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "WorkerSettings":
        """The settings a `to_json` dict describes; unknown or missing fields are errors."""
        if not isinstance(data, dict):
            raise SettingsError(f"worker settings must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown worker settings {unknown}; known: {sorted(known)}")
        required = {f.name for f in fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise SettingsError(f"worker settings lack {missing}")
        return cls(**data).validate()

    def replace(self, **changes) -> "WorkerSettings":
        return dataclasses.replace(self, **changes).validate()


def _kind(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]
