"""Adding, replacing, corrupting and removing versions while traffic flows."""

from __future__ import annotations

import shutil
import threading

import pytest

from framewire.client import Client, FramewireError
from framewire.v1 import inference_pb2 as pb
from support.artifacts import export_tiny
from support.images import encode, random_image
from support.server import RunningServer
from support.waiting import wait_until


def versions(client, model="tiny") -> dict[int, pb.ModelVersionStatus]:
    for m in client.list_models().models:
        if m.name == model:
            return {v.version: v for v in m.versions}
    return {}


class Traffic:
    """Threads sending unversioned requests; records versions seen and failures.

    Each thread keeps one request in flight at a time and pauses `pause`
    seconds between them, so a version switch always meets requests in
    flight without the suite spending a core on traffic for the whole test.
    """

    pause = 0.01

    def __init__(self, address: str, threads: int = 3):
        self.address, self.stop_flag = address, threading.Event()
        self.seen: list[int] = []
        self.failures: list[Exception] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        image = encode(random_image(11))
        with Client(self.address, retries=0, timeout=30) as c:
            while not self.stop_flag.is_set():
                try:
                    self.seen.append(c.predict(image, model="tiny").version)
                except FramewireError as exc:
                    self.failures.append(exc)
                self.stop_flag.wait(self.pause)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def test_versions_come_and_go_under_load_without_a_failed_request(tmp_path):
    repo = tmp_path
    export_tiny(repo, "tiny", 1, seed=0)
    with RunningServer(repo=str(repo), poll_seconds=0.2, max_queue_delay_us=1000) as server, \
            Client(server.address) as admin:
        traffic = Traffic(server.address)
        try:
            wait_until(lambda: len(traffic.seen) > 20, what="traffic on v1")

            export_tiny(repo, "tiny", 2, seed=1)  # a new version: loaded, warmed, then takes over
            wait_until(lambda: traffic.seen[-1] == 2, what="traffic on v2")
            wait_until(lambda: list(versions(admin)) == [2], what="v1 drained and unloaded")

            broken = repo / "tiny" / "3" / "model.fwa"  # a half-written copy
            broken.parent.mkdir()
            full = (repo / "tiny" / "2" / "model.fwa").read_bytes()
            broken.write_bytes(full[: len(full) // 2])
            v3 = wait_until(lambda: versions(admin).get(3), what="v3 seen")
            wait_until(lambda: versions(admin)[3].state == pb.MODEL_STATE_UNAVAILABLE, what="v3 UNAVAILABLE")
            assert "truncated" in versions(admin)[3].reason
            mark = len(traffic.seen)
            wait_until(lambda: len(traffic.seen) >= mark + 20, what="20 more answers while v3 is broken")
            assert set(traffic.seen[mark:]) == {2}  # the good version keeps serving
            assert versions(admin)[2].state == pb.MODEL_STATE_READY
            assert v3.version == 3

            export_tiny(repo, "tiny", 3, seed=2, overwrite=True)  # the copy completes
            wait_until(lambda: traffic.seen[-1] == 3, what="traffic on v3")

            shutil.rmtree(repo / "tiny" / "3")  # newest removed: back to v2
            wait_until(lambda: traffic.seen[-1] == 2, what="traffic back on v2")
        finally:
            traffic.stop()
    assert traffic.failures == []
    assert len(traffic.seen) > 100


def test_a_removed_version_is_drained_and_unloaded(tmp_path):
    export_tiny(tmp_path, "tiny", 1)
    export_tiny(tmp_path, "tiny", 2, seed=5)
    with RunningServer(repo=str(tmp_path), version_policy="all") as server, Client(server.address) as c:
        assert sorted(versions(c)) == [1, 2]
        assert c.predict(encode(random_image(1)), model="tiny", version=1).version == 1
        shutil.rmtree(tmp_path / "tiny" / "1")
        server.poll()
        wait_until(lambda: sorted(versions(c)) == [2], what="v1 unloaded")
        with pytest.raises(FramewireError) as info:
            c.predict(encode(random_image(1)), model="tiny", version=1)
        assert "no version 1" in info.value.message


def test_one_broken_model_does_not_stop_the_others(tmp_path):
    export_tiny(tmp_path, "tiny", 1)
    broken = tmp_path / "broken" / "1" / "model.fwa"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an artifact")
    with RunningServer(repo=str(tmp_path)) as server, Client(server.address, retries=0) as c:
        assert c.predict(encode(random_image(1)), model="tiny").classes
        state = versions(c, "broken")[1]
        assert state.state == pb.MODEL_STATE_UNAVAILABLE and "not a framewire artifact" in state.reason
        with pytest.raises(FramewireError) as info:
            c.predict(encode(random_image(1)), model="broken")
        assert info.value.code.name == "UNAVAILABLE" and "no READY version" in info.value.message


def test_models_filter_and_version_policies(tmp_path):
    for version in (1, 2, 3):
        export_tiny(tmp_path, "tiny", version, seed=version)
    export_tiny(tmp_path, "other", 1)
    with RunningServer(repo=str(tmp_path), models=["tiny"], version_policy="specific:1,3") as server, \
            Client(server.address) as c:
        assert [m.name for m in c.list_models().models] == ["tiny"]
        assert sorted(versions(c)) == [1, 3]
        assert c.predict(encode(random_image(1)), model="tiny").version == 3
    with RunningServer(repo=str(tmp_path), version_policy="latest:2") as server, Client(server.address) as c:
        assert sorted(versions(c)) == [2, 3]
        assert sorted(versions(c, "other")) == [1]
