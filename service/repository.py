"""The model repository: `<repo>/<model>/<version>/model.fwa`, served live.

* Each model's version policy (latest N, all, specific) picks the versions
  to serve. A new version is loaded and warmed up before it takes traffic.
* Polling picks up added, changed and removed versions. A version that
  leaves the policy is drained (in-flight requests finish), then unloaded,
  but an older READY version is kept until a wanted version is READY: a
  half-written or corrupt file never replaces a good version; it shows up as
  UNAVAILABLE with its reason and is retried when the file changes.
* A request holds a lease on the version that serves it; draining waits for
  leases, so reloads fail no request.
* One model failing to load never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from framewire.exporter import ARTIFACT_FILENAME, ArtifactError
from framewire.exporter.format import MODEL_NAME_RE

from . import heap
from .access import check_model_access
from .config import ConfigError, ServeConfig, parse_version_policy
from .domain import ModelState
from .errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError, ShuttingDownError
from .load_budget import LoadBudget
from .model import ServedModel
from .model_view import ModelView
from .requests import model_name
from .worker_runner import WorkerStartError

log = logging.getLogger("framewire.repository")


Stamp = tuple[int, int, int]


@dataclass
class VersionSlot:
    """One version of one model and its lifecycle."""

    name: str
    version: int
    path: Path
    stamp: Stamp
    state: ModelState = ModelState.LOADING
    reason: str = ""
    served: ServedModel | None = None
    task: str = ""
    leases: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def device(self) -> str:
        return self.served.device if self.served else ""

    @property
    def view(self) -> ModelView | None:
        """What a servicer may see of the loaded version (None when not loaded)."""
        return self.served.view if self.served else None


class ModelRepository:
    """Loads, serves, reloads and unloads the versions of a model repository."""

    def __init__(self, config: ServeConfig, build: Callable[[Path, LoadBudget], ServedModel],
                 on_change: Callable[[], None] | None = None):
        """`build(path, budget)` makes a version's ServedModel; the budget
        (--load-timeout-seconds) bounds its load and is cancelled on close."""
        self.config = config
        self.root = Path(config.repo)
        self._build = build
        self._on_change = on_change or (lambda: None)
        self._slots: dict[str, dict[int, VersionSlot]] = {}
        self._poll_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._unloaded: set[str] = set()
        self._loading: set[LoadBudget] = set()
        self._closing = False

    # ------------------------------------------------------------ lifecycle

    def check_contents(self) -> None:
        """Refuse to start on a repository that does not exist, holds no
        model, or lacks a model named by --models (unless --allow-empty):
        raise ConfigError naming what the repository does hold."""
        if self.config.allow_empty:
            return
        where = str(self.root) if self.root.is_absolute() else f"{self.root} ({self.root.resolve()})"
        empty_ok = "or pass --allow-empty to start without models and load them as they appear"
        if not self.root.is_dir():
            raise ConfigError(f"model repository {where} does not exist; export a model into it "
                              f"(framewire export ... --repo {self.root}) {empty_ok}")
        held = sorted(self._scan(only_allowed=False))
        if not held:
            raise ConfigError(f"model repository {where} holds no model (<repo>/<model>/<version>/{ARTIFACT_FILENAME}); "
                              f"export one (framewire export ... --repo {self.root}) {empty_ok}")
        missing = [name for name in self.config.models if name not in held]
        if missing:
            raise ConfigError(f"--models names {', '.join(missing)}, which {where} does not hold (it holds: "
                              f"{', '.join(held)}); correct the name, {empty_ok}")

    async def start(self) -> None:
        """Load what the repository holds now; then keep polling."""
        if not self.root.is_dir():
            log.warning("model repository %s does not exist; serving no models until it does (--allow-empty)",
                        self.root)
        await self.poll_once()
        if self.config.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository-poll")

    async def close(self) -> None:
        """Stop polling and loading, drain and unload every version."""
        self._closing = True
        for budget in list(self._loading):  # never wait for a load to finish
            budget.cancel()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        async with self._poll_lock:
            slots = [s for versions in self._slots.values() for s in versions.values()]
            await asyncio.gather(*(self._retire(s) for s in slots), return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            try:
                await self.poll_once()
            except Exception:  # a scan must never kill the poller
                log.exception("repository poll failed; retrying in %.1fs", self.config.poll_seconds)

    async def poll_once(self) -> None:
        """Scan the repository once and bring the served versions in line."""
        async with self._poll_lock:
            if self._closing:
                return
            found = await asyncio.get_running_loop().run_in_executor(None, self._scan)
            names = sorted(set(found) | set(self._slots))
            await asyncio.gather(*(self._sync_model(n, found.get(n, {})) for n in names))
        self._on_change()

    # ------------------------------------------------------------- requests

    def lease(self, name: str, version: int = 0) -> "_Lease":
        """The version that serves a request, held until the request is done
        (`async with repo.lease(name, version) as model`)."""
        return _Lease(self, name, version)

    def get(self, name: str, version: int = 0) -> ModelView:
        """The READY version that would serve a request now (no lease)."""
        return self._resolve(name, version).served.view

    def _resolve(self, name: str, version: int) -> VersionSlot:
        model_name(name)
        check_model_access(name)
        if self._closing:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        versions = self._slots.get(name)
        if not versions:
            served = ", ".join(sorted(self._slots)) or "none"
            raise ModelNotFoundError(f"model {name!r} is not served here (served models: {served})")
        if version:
            slot = versions.get(version)
            if slot is None:
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version} (versions: {self._versions_text(name)})"
                )
            if slot.state is not ModelState.READY:
                raise ModelUnavailableError(
                    f"model {name!r} version {version} is {slot.state.value}"
                    + (f": {slot.reason}" if slot.reason else "")
                )
            return slot
        ready = [s for s in versions.values() if s.state is ModelState.READY]
        if not ready:
            raise ModelUnavailableError(
                f"model {name!r} has no READY version (versions: {self._versions_text(name)})"
            )
        return max(ready, key=lambda s: s.version)

    def _versions_text(self, name: str) -> str:
        parts = []
        for slot in sorted(self._slots.get(name, {}).values(), key=lambda s: -s.version):
            reason = f": {slot.reason}" if slot.reason and slot.state is not ModelState.READY else ""
            parts.append(f"{slot.version} {slot.state.value}{reason}")
        return "; ".join(parts) or "none"

    # ------------------------------------------------------- admin requests

    async def unload(self, name: str) -> None:
        """Drain and unload every version of `name`; it stays unloaded (polling
        leaves it alone) until `load(name)`."""
        model_name(name)
        async with self._poll_lock:
            slots = list(self._slots.get(name, {}).values())
            if not slots and name not in self._unloaded:
                raise ModelNotFoundError(f"model {name!r} is not loaded (loaded: {', '.join(sorted(self._slots)) or 'none'})")
            self._unloaded.add(name)
            for slot in slots:
                if slot.state is not ModelState.DRAINING:
                    log.info("unloading %s version %d on request", name, slot.version)
                    slot.state, slot.reason = ModelState.DRAINING, "unloaded on request"
        await asyncio.gather(*(self._drain_and_unload(s, forget=True) for s in slots if s.served or s.leases))
        for slot in slots:
            versions = self._slots.get(name, {})
            if versions.get(slot.version) is slot:
                del versions[slot.version]
        if not self._slots.get(name):
            self._slots.pop(name, None)
        self._on_change()

    async def load(self, name: str) -> None:
        """Load (or reload) `name` from the repository now; raises unless a
        version of it is READY afterwards."""
        model_name(name)
        if self.config.models and name not in self.config.models:
            raise ModelNotFoundError(
                f"model {name!r} is not among the models this server serves (--models {','.join(self.config.models)})"
            )
        async with self._poll_lock:
            self._unloaded.discard(name)
            found = await asyncio.get_running_loop().run_in_executor(None, self._scan)
            if name not in found:
                raise ModelNotFoundError(f"model {name!r} is not in the repository {self.root} (<repo>/<model>/<version>/model.fwa)")
            await self._sync_model(name, found[name])
        self._on_change()
        if not any(s.state is ModelState.READY for s in self._slots.get(name, {}).values()):
            raise ModelLoadError(f"model {name!r} failed to load (versions: {self._versions_text(name)})")

    @property
    def unloaded(self) -> frozenset[str]:
        """Models unloaded on request."""
        return frozenset(self._unloaded)

    # ---------------------------------------------------------------- views

    def models(self) -> dict[str, list[VersionSlot]]:
        """Every model and its versions, newest first."""
        return {
            name: sorted(versions.values(), key=lambda s: -s.version)
            for name, versions in sorted(self._slots.items())
            if versions
        }

    def knows(self, name: str, version: int = 0) -> bool:
        """Whether `name` (and `version`, when given) is a model this server has (in any state)."""
        return name in self._slots and (not version or version in self._slots[name])

    def served(self) -> list[ServedModel]:
        return [s.served for v in self._slots.values() for s in v.values() if s.served is not None]

    @property
    def ready(self) -> bool:
        return any(s.state is ModelState.READY for v in self._slots.values() for s in v.values())

    # ------------------------------------------------------------- syncing

    def _scan(self, *, only_allowed: bool = True) -> dict[str, dict[int, tuple[Path, Stamp]]]:
        found: dict[str, dict[int, tuple[Path, Stamp]]] = {}
        allowed = set(self.config.models) if only_allowed else set()
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            name = model_dir.name
            if not model_dir.is_dir() or not MODEL_NAME_RE.match(name) or (allowed and name not in allowed):
                continue
            if name in self._unloaded:
                continue
            versions = {}
            for version_dir in model_dir.iterdir():
                if not (version_dir.is_dir() and version_dir.name.isdigit() and int(version_dir.name) > 0):
                    continue
                artifact = version_dir / ARTIFACT_FILENAME
                try:
                    st = artifact.stat()
                except OSError:
                    continue
                versions[int(version_dir.name)] = (artifact, (st.st_size, st.st_mtime_ns, st.st_ino))
            if versions:
                found[name] = versions
        return found

    async def _sync_model(self, name: str, on_disk: dict[int, tuple[Path, Stamp]]) -> None:
        kind, args = parse_version_policy(self.config.for_model(name).version_policy)
        available = sorted(on_disk, reverse=True)
        if kind == "latest":
            wanted = set(available[: args[0]])
        elif kind == "all":
            wanted = set(available)
        else:
            wanted = set(args) & set(available)
        slots = self._slots.setdefault(name, {})

        loads = []
        for version in sorted(wanted):
            path, stamp = on_disk[version]
            slot = slots.get(version)
            if slot is None or slot.state is ModelState.DRAINING:
                # New, or wanted again while its old copy is still draining:
                # load a fresh copy (the draining one finishes on its own).
                slot = slots[version] = VersionSlot(name, version, path, stamp)
                loads.append(self._load(slot))
            elif slot.stamp != stamp and slot.state in (ModelState.READY, ModelState.UNAVAILABLE):
                loads.append(self._reload(slot, path, stamp))
        if loads:
            await asyncio.gather(*loads)

        # A READY version leaves only once a wanted version is READY, so a
        # broken or still-loading replacement never leaves the model without
        # one (even when the old version's file is already gone).
        ready_wanted = False
        for version in wanted:
            if version in slots and slots[version].state is ModelState.READY:
                ready_wanted, slots[version].reason = True, ""
        for version, slot in list(slots.items()):
            if version in wanted or slot.state is ModelState.DRAINING:
                continue
            gone = version not in on_disk
            if slot.state is not ModelState.READY or ready_wanted or not wanted:
                why = "its file was removed" if gone else "the version policy no longer selects it"
                self._start_retire(slot, why)
            elif not slot.reason:
                slot.reason = "kept serving until a newer wanted version is READY"
                log.warning("%s version %d: %s", name, version, slot.reason)
        if not slots:
            self._slots.pop(name, None)

    async def _load(self, slot: VersionSlot) -> None:
        log.info("loading %s version %d from %s", slot.name, slot.version, slot.path)
        budget = LoadBudget(self.config.for_model(slot.name).load_timeout_seconds)
        self._loading.add(budget)
        try:
            served = await asyncio.get_running_loop().run_in_executor(None, self._build_warm, slot.path, budget)
            # Only with --serve-path-identity (checked and logged where it was built).
            served.name, served.version = slot.name, slot.version
            served.start()
        except ArtifactError as exc:
            self._fail(slot, exc.reason)
            return
        except WorkerStartError as exc:
            self._fail(slot, exc.message)
            return
        except Exception as exc:  # a model must never take the others down
            log.exception("loading %s version %d failed", slot.name, slot.version)
            self._fail(slot, f"{type(exc).__name__}: {exc}")
            return
        slot.served, slot.task = served, served.task
        slot.state, slot.reason = ModelState.READY, ""
        heap.keep()  # the new version's objects live as long as it: out of the collector's walks
        loop = asyncio.get_running_loop()
        served.runner.on_stale = lambda why: loop.call_soon_threadsafe(self._mark_stale, slot, why)
        threads = served.config.cpu_threads
        log.info("%s version %d is READY on %s (%d instance(s) per device%s)", slot.name, slot.version, served.device,
                 served.config.instances_per_device, f", {threads} thread(s) each" if threads else "")

    def _build_warm(self, path: Path, budget: LoadBudget) -> ServedModel:
        """Build and warm up a version (in an executor thread). The budget is
        cancellable until this thread is done, even when the coroutine
        awaiting it was cancelled (a server stopping while it starts)."""
        try:
            served = self._build(path, budget)
            served.load()
            try:
                served.warm_up()
            except BaseException:
                served.unload()
                raise
            return served
        except BaseException:
            if budget.cancelled:
                log.info("%s: %s", path, budget.failure())
            raise
        finally:
            self._loading.discard(budget)

    def _mark_stale(self, slot: VersionSlot, why: str) -> None:
        """A worker of a READY version found its file changed: the version is
        UNAVAILABLE (its requests would otherwise get other answers) until it
        is reloaded from the new file; its running instances drain and stop."""
        if slot.state is not ModelState.READY or self._slots.get(slot.name, {}).get(slot.version) is not slot:
            return
        self._fail(slot, why)
        served, slot.served = slot.served, None
        self._spawn(self._close_when_idle(slot, served))
        self._on_change()

    async def _close_when_idle(self, slot: VersionSlot, served: ServedModel) -> None:
        if slot.leases:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(slot.idle.wait(), timeout=self.config.drain_seconds)
        await served.close(drain=True)

    def _fail(self, slot: VersionSlot, reason: str) -> None:
        slot.state, slot.reason = ModelState.UNAVAILABLE, reason
        log.error("%s version %d is UNAVAILABLE: %s", slot.name, slot.version, reason)

    async def _reload(self, slot: VersionSlot, path: Path, stamp: Stamp) -> None:
        """The file of a version changed: load the new one; keep the old on failure."""
        slot.stamp = stamp
        if slot.state is ModelState.UNAVAILABLE:
            slot.path, slot.state, slot.reason = path, ModelState.LOADING, ""
            await self._load(slot)
            return
        fresh = VersionSlot(slot.name, slot.version, path, stamp)
        await self._load(fresh)
        if fresh.state is not ModelState.READY:
            log.error("%s version %d changed on disk but the new file failed to load; still serving "
                      "the old one: %s", slot.name, slot.version, fresh.reason)
            return
        # Requests already holding the old slot keep it until they finish.
        slot.state, slot.reason = ModelState.DRAINING, "replaced by a changed file"
        self._slots[slot.name][slot.version] = fresh
        self._spawn(self._drain_and_unload(slot, forget=False))

    def _start_retire(self, slot: VersionSlot, why: str) -> None:
        log.info("draining %s version %d: %s", slot.name, slot.version, why)
        slot.state, slot.reason = ModelState.DRAINING, why
        self._spawn(self._drain_and_unload(slot, forget=True))

    async def _retire(self, slot: VersionSlot) -> None:
        slot.state = ModelState.DRAINING
        await self._drain_and_unload(slot, forget=True)

    async def _drain_and_unload(self, slot: VersionSlot, *, forget: bool) -> None:
        if slot.leases:
            try:
                await asyncio.wait_for(slot.idle.wait(), timeout=self.config.drain_seconds)
            except asyncio.TimeoutError:
                log.warning("%s version %d still had %d requests after %.0fs; unloading anyway",
                            slot.name, slot.version, slot.leases, self.config.drain_seconds)
        if slot.served is not None:
            await slot.served.close(drain=True)
            log.info("unloaded %s version %d", slot.name, slot.version)
        if forget:
            versions = self._slots.get(slot.name, {})
            if versions.get(slot.version) is slot:
                del versions[slot.version]
            if not versions:
                self._slots.pop(slot.name, None)
        self._on_change()
        # Cycles among the unloaded version's frozen objects are freed only by a full collection.
        asyncio.get_running_loop().call_later(1.0, heap.settle)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Lease:
    """`ModelRepository.lease`: a plain async context manager, as it runs once per request."""

    __slots__ = ("repo", "name", "version", "slot")

    def __init__(self, repo: ModelRepository, name: str, version: int):
        self.repo = repo
        self.name = name
        self.version = version
        self.slot = None

    async def __aenter__(self) -> ModelView:
        slot = self.slot = self.repo._resolve(self.name, self.version)
        slot.leases += 1
        slot.idle.clear()
        return slot.served.view

    async def __aexit__(self, *exc) -> None:
        slot = self.slot
        slot.leases -= 1
        if slot.leases == 0:
            slot.idle.set()
