"""Server configuration: one typed object from defaults, a TOML file, the
environment and flags (later sources win), validated once at start-up.

Every setting is a field of :class:`ServeConfig`; its flag is
``--field-name`` and its environment variable ``FRAMEWIRE_FIELD_NAME``. A
TOML file (``--config``) may set any field at top level and override
batching and version policy per model under ``[model.<name>]``.

Precedence, highest first (:data:`PRECEDENCE`): flags, the environment, the
file's ``[model.<name>]`` table, the file's top level, the defaults. A model
table is the most specific thing the *file* says, so it beats the file's
top level; a flag or an environment variable is what the operator said at
start-up, so it beats the whole file, model tables included (a model table
setting a key that a flag or the environment set is ignored, and the server
logs it at start-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from framewire.exporter.format import DEFAULT_MAX_ARTIFACT_BYTES

ENV_PREFIX = "FRAMEWIRE_"
MIB = 1024 * 1024

#: Settings a model's TOML table (`[model.<name>]`) may override.
PER_MODEL_FIELDS = (
    "version_policy",
    "max_batch_size",
    "max_queue_delay_us",
    "latency_budget_ms",
    "max_queue_size",
    "preferred_batch_sizes",
    "instances_per_device",
    "jpeg_draft",
    "load_timeout_seconds",
)


#: The order `framewire serve --help` and the README state.
PRECEDENCE = ("flags", "environment", "[model.<name>] in the file", "top level of the file", "defaults")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and the value."""


def setting(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ServeConfig:
    """Everything `framewire serve` can be told."""

    repo: str = setting("models", "model repository: <repo>/<model>/<version>/model.fwa")
    models: list[str] = field(default_factory=list, metadata={"help": "serve only these models (comma-separated); default "
                              "all. A name the repository does not hold is a start-up error (see --allow-empty)"})
    allow_empty: bool = setting(False, "start even when the repository does not exist or holds none of the models "
                                "(for a repository filled later; polling loads models as they appear). Without it "
                                "a missing repository, an empty one, or a --models name it lacks is a start-up error")
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = setting(8500, "gRPC port (0 picks a free one)")
    tls_cert: str = setting("", "PEM certificate chain of the server; with --tls-key, serves TLS")
    tls_key: str = setting("", "PEM private key of the server")
    tls_client_ca: str = setting("", "PEM CA bundle; when given, clients must present a certificate it signed (mTLS)")
    tokens_file: str = setting("", "TOML file of bearer tokens (sha256, scopes, models); when given, every rpc but "
                               "health checks needs a token; re-read on SIGHUP and when it changes")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (auto: every visible GPU, else the CPU)")
    dtype: str = setting("auto", "auto | float32 | float16 | bfloat16 (auto: float16 on CUDA, float32 on CPU)")
    runner: str = setting("process", "process: models run in worker processes per device, shared by every "
                          "model placed there (a crash cannot take the server down, and the network never waits "
                          "for the event loop's GIL); "
                          "thread: in the server process (lighter for many small models)")
    instances_per_device: int = setting(0, "model instances per device, one per worker process; each batch goes "
                                        "to a free one (0: auto, 1 per GPU; on the CPU 2 worker processes that split "
                                        "the cores, which keeps OpenMP teams small and the cores busy). The server's "
                                        "value sets the CPU worker processes, shared by every model; on CUDA there "
                                        "is one worker process per GPU")
    channels_last: bool = setting(True, "run convolutions in channels_last memory format")
    cuda_graphs: bool = setting(False, "on CUDA, replay CUDA graphs captured per batch-size bucket (batches are "
                                "padded up to the next warm-up size); falls back to eager when capture fails")
    cpu_threads: int = setting(0, "torch intra-op threads per model instance on the CPU (0: auto, the usable "
                               "CPUs (affinity, capped by a container's CPU limit) divided among the instances of "
                               "--runner process; torch's default with --runner thread)")
    decode_threads: int = setting(0, "threads decoding and preprocessing images next to each model instance (0: "
                                  "auto, the instance's --cpu-threads on the CPU, min(8, CPUs) beside a GPU)")
    frontends: str = setting(
        "1", "front-end processes sharing the gRPC port (SO_REUSEPORT), each parsing, checking and batching the "
        "requests of its connections; they share the device worker processes, which merge their batches of one "
        "model (auto: one per 4 usable CPUs, at most 8)")
    worker_nice: int = setting(0, "scheduling niceness added to model worker processes (0-19; 0: none). On a CPU "
                               "host where the front end shares cores with the workers, a positive value lets "
                               "the front end's short, latency-critical work (admission, refusals, answers) "
                               "preempt the long batches")
    jpeg_draft: bool = setting(False, "decode a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain when it is at least "
                               "twice the size the model resizes to (much less CPU per large image; pixels change "
                               "slightly, see docs/request-path.md); per model in the TOML file too")
    max_batch_size: int = setting(32, "largest device batch")
    max_queue_delay_us: int = setting(2000, "longest wait for a batch to fill, from its first image, in microseconds")
    latency_budget_ms: float = setting(
        0.0, "answer each request within this many milliseconds (0: off). Batches then close by a learned "
        "compute-time curve instead of --max-queue-delay-us, and a request that could not be answered in time "
        "is refused at once (UNAVAILABLE, with a retry-after hint) instead of queueing; a request's own deadline "
        "tightens it. Per model in the TOML file too")
    preferred_batch_sizes: list[int] = field(default_factory=list, metadata={"help": "batch sizes to prefer when the queue holds fewer than the maximum (comma-separated)"})
    max_queue_size: int = setting(1024, "images a model may have waiting; beyond, requests get UNAVAILABLE at once")
    pipeline_depth: int = setting(-1, "batches formed ahead while the device is busy (-1: 1 on CUDA, 0 on the CPU)")
    max_message_bytes: int = setting(64 * MIB, "largest gRPC message, in bytes")
    max_image_bytes: int = setting(32 * MIB, "largest encoded image, in bytes")
    max_image_pixels: int = setting(40_000_000, "largest image, in pixels (guards against decompression bombs)")
    max_images_per_request: int = setting(256, "most images in one BatchPredict request")
    max_stream_in_flight: int = setting(64, "most frames of one stream id waiting for an answer (and requests of "
                                        "one protocol stream); a client not reading its answers is read from no more")
    max_streams_per_connection: int = setting(16, "most streaming calls one client connection may hold open")
    max_concurrent_rpcs: int = setting(
        1000, "most calls handled at once (a stream counts while open; health checks are never "
        "refused); beyond, a new call gets UNAVAILABLE at once (retry with backoff)")
    max_tensor_elements: int = setting(120_000_000, "most elements in one raw image tensor")
    max_artifact_bytes: int = setting(DEFAULT_MAX_ARTIFACT_BYTES, "largest artifact file the loader reads")
    poll_seconds: float = setting(5.0, "how often to rescan the repository for new, changed or removed versions (0: never)")
    version_policy: str = setting("latest:1", "versions to serve: latest:N | all | specific:V1,V2")
    warmup: bool = setting(True, "run every batch size once before a version takes traffic")
    load_timeout_seconds: float = setting(
        120.0, "budget for loading one version (checks, rebuilding the network, warm-up); a load that "
        "overruns is stopped and that version alone is UNAVAILABLE")
    trusted_keys: str = setting("", "directory of Ed25519 public keys (*.pub, from `framewire keygen`); a signed "
                                "artifact must verify with one of them")
    require_signed: bool = setting(False, "refuse artifacts that are not signed by a trusted key (needs --trusted-keys)")
    serve_path_identity: bool = setting(
        False, "serve an artifact whose recorded name and version differ from its path "
        "(<repo>/<model>/<version>/) as its path says, instead of refusing it (not with --require-signed)")
    drain_seconds: float = setting(30.0, "on SIGTERM/SIGINT, how long in-flight work may take to finish")
    max_connection_age_seconds: float = setting(
        0.0, "ask clients to reconnect after this long (0: never), so client-side load balancing "
        "reaches replicas added later; calls in flight, streams too, are not cut")
    reflection: bool = setting(True, "enable gRPC server reflection (grpcurl can list and call)")
    model_health: bool = setting(
        True, "answer the health service for framewire.model.<name> per model; health checks need no token, "
        "so these tell anyone which models are served (--no-model-health turns them off)")
    metrics_port: int = setting(9090, "port of the Prometheus /metrics endpoint (0 picks a free one, -1 turns it off)")
    metrics_host: str = setting("127.0.0.1", "address the metrics endpoint listens on (0.0.0.0 for every interface)")
    gpu_sample_seconds: float = setting(1.0, "how often to read GPU utilisation, memory, power and temperature from NVML")
    log_level: str = setting("info", "debug | info | warning | error")
    log_format: str = setting("text", "text | json (one JSON object per line, for log collectors)")
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"internal": True})
    #: `[model.<name>] key` settings that a flag or the environment overrode, for the start-up log.
    shadowed_overrides: list[str] = field(default_factory=list, metadata={"internal": True})

    def validate(self) -> "ServeConfig":
        """Check every value once; raise ConfigError naming the bad one."""
        def need(cond: bool, name: str, message: str) -> None:
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {message}")

        need(bool(self.repo), "repo", "a model repository directory is required")
        need(0 <= self.port <= 65535, "port", "must be 0..65535")
        need(bool(self.tls_cert) == bool(self.tls_key), "tls_cert", "--tls-cert and --tls-key go together")
        need(not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca", "mutual TLS needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
            value = getattr(self, name)
            need(not value or Path(value).is_file(), name, "is not a readable file")
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device", "use auto, cpu, cuda or cuda:N")
        need(self.dtype in ("auto", "float32", "float16", "bfloat16"), "dtype", "use auto, float32, float16 or bfloat16")
        need(self.runner in ("process", "thread"), "runner", "use process or thread")
        need(self.instances_per_device >= 0, "instances_per_device", "must be 0 (auto) or more")
        need(self.cpu_threads >= 0, "cpu_threads", "must be 0 (auto) or more")
        need(self.decode_threads >= 0, "decode_threads", "must be 0 (auto) or more")
        need(re.fullmatch(r"auto|\d+", self.frontends) is not None and self.frontends not in ("0",)
             and (self.frontends == "auto" or int(self.frontends) <= 64), "frontends", "use auto or 1..64")
        need(self.frontends in ("1", "auto") or self.runner == "process", "frontends",
             "several front ends share worker processes: use --runner process")
        need(0 <= self.worker_nice <= 19, "worker_nice", "must be between 0 and 19")
        need(1 <= self.max_batch_size <= 4096, "max_batch_size", "must be 1..4096")
        need(self.max_queue_delay_us >= 0, "max_queue_delay_us", "must not be negative")
        need(math.isfinite(self.latency_budget_ms) and self.latency_budget_ms >= 0, "latency_budget_ms",
             "must be 0 (off) or a positive number of milliseconds")
        need(all(1 <= s <= self.max_batch_size for s in self.preferred_batch_sizes),
             "preferred_batch_sizes", f"each must be 1..max_batch_size ({self.max_batch_size})")
        need(self.max_queue_size >= self.max_batch_size, "max_queue_size", f"must be at least max_batch_size ({self.max_batch_size})")
        need(self.pipeline_depth >= -1, "pipeline_depth", "must be -1 (auto) or more")
        need(self.max_message_bytes >= 1024, "max_message_bytes", "must be at least 1024")
        need(self.max_image_bytes >= 1, "max_image_bytes", "must be positive")
        need(self.max_image_pixels >= 1, "max_image_pixels", "must be positive")
        need(self.max_images_per_request >= 1, "max_images_per_request", "must be positive")
        need(self.max_stream_in_flight >= 1, "max_stream_in_flight", "must be positive")
        need(self.max_streams_per_connection >= 1, "max_streams_per_connection", "must be positive")
        need(self.max_concurrent_rpcs >= 1, "max_concurrent_rpcs", "must be positive")
        need(self.max_tensor_elements >= 1, "max_tensor_elements", "must be positive")
        need(self.max_artifact_bytes >= 1, "max_artifact_bytes", "must be positive")
        need(self.poll_seconds >= 0, "poll_seconds", "must be 0 (no polling) or more")
        need(self.load_timeout_seconds > 0, "load_timeout_seconds", "must be positive")
        need(self.drain_seconds >= 0, "drain_seconds", "must not be negative")
        need(self.max_connection_age_seconds >= 0, "max_connection_age_seconds", "must be 0 (never) or more")
        need(self.log_level in ("debug", "info", "warning", "error"), "log_level", "use debug, info, warning or error")
        need(self.log_format in ("text", "json"), "log_format", "use text or json")
        need(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1 (off), 0 (any) or a port")
        need(self.gpu_sample_seconds > 0, "gpu_sample_seconds", "must be positive")
        parse_version_policy(self.version_policy)
        need(not self.require_signed or bool(self.trusted_keys), "require_signed",
             "needs --trusted-keys: a directory of the public keys to trust")
        need(not self.trusted_keys or Path(self.trusted_keys).is_dir(), "trusted_keys", "is not a directory")
        need(not (self.serve_path_identity and self.require_signed), "serve_path_identity",
             "cannot go with --require-signed: a signed artifact is served only as the name and version it was signed with")
        for model, overrides in self.model_overrides.items():
            unknown = sorted(set(overrides) - set(PER_MODEL_FIELDS))
            if unknown:
                raise ConfigError(
                    f"[model.{model}] sets {unknown}; a model table may set only {list(PER_MODEL_FIELDS)}"
                )
            dataclasses.replace(self, model_overrides={}, shadowed_overrides=[], **overrides).validate()
        return self

    def for_model(self, name: str) -> "ServeConfig":
        """This config with the model's TOML overrides applied."""
        overrides = self.model_overrides.get(name)
        return dataclasses.replace(self, **overrides) if overrides else self

    @property
    def max_queue_delay(self) -> float:
        return self.max_queue_delay_us / 1e6

    @property
    def latency_budget(self) -> float | None:
        """The latency budget in seconds, None when off."""
        return self.latency_budget_ms / 1000 if self.latency_budget_ms > 0 else None


def parse_version_policy(text: str) -> tuple[str, tuple[int, ...]]:
    """("latest", (N,)), ("all", ()) or ("specific", (v1, v2, ...))."""
    match = re.fullmatch(r"latest(?::(\d+))?|all|specific:(\d+(?:,\d+)*)", text.strip())
    if not match:
        raise ConfigError(f"version_policy={text!r}: use latest:N, all or specific:V1,V2")
    if text.startswith("latest"):
        n = int(match.group(1) or 1)
        if n < 1:
            raise ConfigError(f"version_policy={text!r}: latest:N needs N >= 1")
        return "latest", (n,)
    if text == "all":
        return "all", ()
    return "specific", tuple(int(v) for v in match.group(2).split(","))


def _public_fields():
    return [f for f in fields(ServeConfig) if not f.metadata.get("internal")]


def _convert(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Coerce a raw value (string from env/flags, or TOML value) to the field's type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("list"):
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            return [int(v) for v in items] if "int" in kind else [str(v).strip() for v in items]
        if kind == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}={value!r} (from {source}): expected {kind}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, documented with its default and env var."""
    parser.add_argument("--config", help="TOML file with settings (flags and environment override it)")
    for f in _public_fields():
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata['help']} [default {default!r}; env {env}]"
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def load_config(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> ServeConfig:
    """Defaults < the file's top level < its `[model.<name>]` tables <
    environment < flags (see PRECEDENCE), then validate."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    by_name = {f.name: f for f in _public_fields()}

    config_file = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        data = _read_toml(config_file)
        for key, value in data.items():
            if key == "model" and isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
                for model, table in value.items():
                    overrides[model] = {
                        k: _convert(by_name[k], v, f"{config_file} [model.{model}]") if k in by_name else v
                        for k, v in table.items()
                    }
                continue
            if key not in by_name:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _convert(by_name[key], value, config_file)
    given: dict[str, str] = {}  # settings from the environment or flags, and where from
    for name, f in by_name.items():
        env = ENV_PREFIX + name.upper()
        if env in environ:
            values[name] = _convert(f, environ[env], f"${env}")
            given[name] = f"{env}={environ[env]}"
    if args is not None:
        for name, f in by_name.items():
            raw = getattr(args, name, None)
            if raw is not None:
                flag = "--" + name.replace("_", "-")
                values[name] = _convert(f, raw, flag)
                given[name] = f"{flag} {raw}"
    shadowed = []
    for model, table in overrides.items():
        for key in sorted(set(table) & set(given) & set(PER_MODEL_FIELDS)):
            shadowed.append(f"[model.{model}] {key} = {table.pop(key)!r} is overridden by {given[key]}")
    overrides = {model: table for model, table in overrides.items() if table}
    return ServeConfig(**values, model_overrides=overrides, shadowed_overrides=shadowed).validate()


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU
    quota (a container's CPU limit, which the affinity mask does not show)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(Path(cgroup_root))
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of quota from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; None when unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()
        quota, period = text[0], text[1]
    except (OSError, IndexError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max": no limit
        return None
    return q / p if q > 0 and p > 0 else None


#: Usable CPUs per front-end process with `--frontends auto`.
CPUS_PER_FRONTEND = 4
MAX_AUTO_FRONTENDS = 8


def frontend_count(config: ServeConfig, cpus: int | None = None) -> int:
    """Front-end processes to run, `auto` resolved from the usable CPUs (cgroup-aware)."""
    if config.frontends != "auto":
        return int(config.frontends)
    if config.runner == "thread":  # models would load in every front end
        return 1
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(MAX_AUTO_FRONTENDS, cpus // CPUS_PER_FRONTEND))


def instance_plan(config: ServeConfig, on_cuda: bool, cpus: int | None = None) -> tuple[int, int]:
    """(instances per device, intra-op threads per instance; 0 is torch's default), `auto` resolved.

    On the CPU, worker processes split the cores between two instances: on
    two cores, two single-threaded instances served mobilenet_v3_small ~20%
    faster than one two-threaded one (BENCHMARKS.md), because one OpenMP team
    stalls at every barrier whenever the front end takes one of its cores.
    """
    cpus = usable_cpus() if cpus is None else cpus
    if on_cuda or config.runner == "thread":
        return config.instances_per_device or 1, config.cpu_threads
    instances = config.instances_per_device or (2 if cpus >= 2 else 1)
    return instances, config.cpu_threads or max(1, cpus // instances)
