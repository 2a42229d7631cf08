"""`framewire serve --frontends 2`: two front-end processes on one port,
sharing the supervisor's worker processes (service/frontends.py).

The real command runs in a subprocess; clients open connections of their
own (a local subchannel pool each), which the kernel spreads over the front
ends, and each connection asks GetServerStatus which front end it reached."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from framewire.client import Client, FramewireError
from framewire.service.auth import new_token, token_entry
from support.artifacts import export_tiny
from support.plugins import (bright_refusing_artifact, hanging_artifact, install_bright_refusing_architecture,
                             install_hanging_architecture)
from support.images import encode, random_image
from support.metrics import scrape, value
from support.processes import gone
from support.server import ServerProcess
from support.waiting import wait_until

#: A connection of its own per client: gRPC would otherwise share one between channels to one address.
OWN_CONNECTION = {"channel_options": (("grpc.use_local_subchannel_pool", 1),)}


class Split:
    """The supervisor, its front ends (from their ready files) and a token."""

    def __init__(self, server: ServerProcess, token: str | None, tokens_file: Path | None):
        self.server = server
        self.token = token
        self.tokens_file = tokens_file
        output = server.output()
        self.runtime = Path(re.search(r"runtime directory (\S+)\)", output).group(1))
        self.metrics_url = "http://127.0.0.1:%s/metrics" % re.search(
            r"metrics at http://127\.0\.0\.1:(\d+)/metrics", output).group(1)

    @property
    def address(self) -> str:
        return self.server.address

    def frontends(self) -> dict[int, dict]:
        """index -> {"pid", "metrics_port", ...} of the front ends up now."""
        found = {}
        for path in self.runtime.glob("frontend-*.json"):
            try:
                found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        return found

    def client(self, token: str | None = None, retries: int = 0) -> Client:
        return Client(self.address, token=token or self.token, retries=retries, timeout=60, **OWN_CONNECTION)


def frontend_pid(client: Client) -> int:
    """The pid of the front end `client`'s connection reached (the status
    document lists every front end; the answering one first)."""
    status = json.loads(client.server_status().status_json)
    return [p["pid"] for p in status["processes"] if p["role"] == "front end"][0]


def clients_on_each_frontend(split: Split, want: int = 2, tries: int = 40) -> dict[int, Client]:
    """A connected client per front end pid (new connections until both were reached)."""
    found: dict[int, Client] = {}
    for _ in range(tries):
        client = split.client()
        pid = frontend_pid(client)
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == want:
            return found
    raise AssertionError(f"{tries} connections reached only front ends {sorted(found)}")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    repo = tmp_path_factory.mktemp("split-repo")
    tiny = export_tiny(repo, "tiny", 1)
    export_tiny(repo, "slow", 1, seed=3, size=192)  # a forward pass of milliseconds: batches wait for it
    plugins = install_bright_refusing_architecture(tmp_path_factory.mktemp("split-plugins"))
    install_hanging_architecture(plugins)
    bright_refusing_artifact(tiny, repo, plugins)  # its forward pass raises on white images
    config = repo.parent / f"{repo.name}.toml"
    config.write_text("[model.hang]\nload_timeout_seconds = 5.0\n")  # a version added later never loads
    token, digest = new_token()
    admin, admin_digest = new_token()
    tokens = tmp_path_factory.mktemp("split-tokens") / "tokens.toml"
    tokens.write_text(token_entry("reader", digest, ["infer"], []) + "\n"
                      + token_entry("ops", admin_digest, ["admin", "infer"], []))
    # --pipeline-depth 1: each front end keeps a batch waiting at the worker while another computes, so
    # the worker finds both front ends' batches waiting and merges them (with the CPU's default, 0, each
    # front end has one batch at a time in the worker, and they meet only by chance).
    server = ServerProcess("--repo", str(repo), "--frontends", "2", "--instances-per-device", "1",
                           "--pipeline-depth", "1",
                           "--tokens-file", str(tokens), "--poll-seconds", "0.5", "--drain-seconds", "20",
                           "--config", str(config),
                           env={"PYTHONPATH": os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH", ""))
                                                              if p)})
    try:
        wait_until(lambda: "(2 front ends)" in server.output(), 120, "both front ends up")
        split = Split(server, token, tokens)
        split.admin = admin
        yield split
    finally:
        server.close()


def test_two_front_ends_answer_on_one_port_with_one_set_of_workers(split):
    clients = clients_on_each_frontend(split)
    ready = split.frontends()
    assert sorted(clients) == sorted(f["pid"] for f in ready.values())
    image = encode(random_image(1))
    answers = [c.predict(image, model="tiny") for c in clients.values()]
    assert answers[0].classes[0].label == answers[1].classes[0].label
    assert answers[0].classes[0].score == pytest.approx(answers[1].classes[0].score, abs=1e-6)
    # Both front ends run their models in the same worker process (one per device here).
    def processes(client: Client) -> tuple:
        status = json.loads(client.server_status().status_json)  # sampled every second
        return (status["server"]["frontends"], {p["pid"] for p in status["processes"] if p["role"] == "front end"},
                {p["pid"] for p in status["processes"] if p["role"] == "worker"})

    # Either front end's status is the whole server's: both front ends, and the one worker process they share.
    for client in clients.values():
        wait_until(lambda: processes(client) == (2, set(clients), processes(client)[2]) and processes(client)[2],
                   10, "the status document listing both front ends and the worker")
    seen = [processes(client) for client in clients.values()]
    assert seen[0] == seen[1] and len(seen[0][2]) == 1, seen
    page = json.loads(urllib.request.urlopen(split.metrics_url.replace("/metrics", "/api/status"), timeout=10).read())
    assert page["server"]["frontends"] == 2 and {p["pid"] for p in page["processes"]} == seen[0][1] | seen[0][2]
    for client in clients.values():
        client.close()


def test_batches_of_two_front_ends_merge_on_the_device(split):
    """Concurrent requests reaching both front ends are run in forward passes
    that hold both front ends' batches: fewer device passes than batches
    formed, and every answer as a lone request gets it."""
    clients = clients_on_each_frontend(split)
    images = [encode(random_image(i, 64, 64)) for i in range(8)]
    alone = [clients[min(clients)].predict(image, model="slow") for image in images]
    before = scrape(split.metrics_url)

    def load(client: Client, round_: int) -> list:
        return [client.predict(images[(round_ + k) % 8], model="slow") for k in range(12)]

    with ThreadPoolExecutor(16) as pool:
        futures = [(r, pool.submit(load, c, r)) for r in range(8) for c in clients.values()]
        answers = [(r, f.result(timeout=120)) for r, f in futures]
    for round_, got in answers:
        for k, answer in enumerate(got):
            expected = alone[(round_ + k) % 8]
            assert answer.classes[0].label == expected.classes[0].label
            assert answer.classes[0].score == pytest.approx(expected.classes[0].score, abs=1e-5)
    after = scrape(split.metrics_url)

    def delta(name: str) -> float:
        return value(after, name, model="slow") - value(before, name, model="slow")

    batches, forwards, images_run = (delta("framewire_executions_total"), delta("framewire_device_forwards_total"),
                                     delta("framewire_inferences_total"))
    assert images_run == 16 * 12
    assert forwards < 0.9 * batches, (forwards, batches)
    for client in clients.values():
        client.close()


def test_a_forward_pass_that_raises_fails_only_its_models_requests_on_either_front_end(split):
    """tiny, slow and bright share the worker process; bright's forward pass
    raises on white images. Its requests fail with INTERNAL, from both front
    ends, while tiny's, sent at the same time through both, are answered; the
    worker goes on (same pid) and bright answers other images."""
    clients = clients_on_each_frontend(split)
    white = encode(np.full((48, 64, 3), 255, np.uint8))
    image = encode(random_image(9))

    def worker() -> set[int]:
        status = json.loads(next(iter(clients.values())).server_status().status_json)
        return {p["pid"] for p in status["processes"] if p["role"] == "worker"}

    before = wait_until(worker, 10, "the status listing the worker")
    with ThreadPoolExecutor(8) as pool:
        refused = [pool.submit(c.predict, white, model="bright") for c in clients.values() for _ in range(3)]
        others = [pool.submit(c.predict, image, model="tiny") for c in clients.values() for _ in range(6)]
        for future in refused:
            with pytest.raises(FramewireError) as info:
                future.result(timeout=60)
            assert info.value.code == grpc.StatusCode.INTERNAL and "refuses bright images" in info.value.message
        assert all(f.result(timeout=60).model == "tiny" for f in others)
    for client in clients.values():
        assert client.predict(image, model="bright").version == 1
    assert worker() == before, "the worker process did not die"
    for client in clients.values():
        client.close()


def test_metrics_are_the_sum_over_the_front_ends(split):
    clients = clients_on_each_frontend(split)
    image = encode(random_image(2))
    for client in clients.values():
        for _ in range(3):
            client.predict(image, model="tiny")
    merged = scrape(split.metrics_url)
    each = [scrape(f"http://127.0.0.1:{f['metrics_port']}/metrics") for f in split.frontends().values()]
    name, labels = "framewire_requests_total", {"model": "tiny", "code": "OK"}
    assert all(value(samples, name, **labels) >= 3 for samples in each)
    # The front ends' counts only grow; the merged one lies between the sums read before and after it.
    assert sum(value(s, name, **labels) for s in each) >= value(merged, name, **labels) >= 6
    # A gauge every front end reports about the same thing is not doubled: the version is READY once.
    assert value(merged, "framewire_model_state", model="tiny", version="1", state="READY") == 1
    # One each front end holds a part of is summed: each has its own queue.
    assert value(merged, "framewire_queue_capacity", model="tiny", version="1") == sum(
        value(samples, "framewire_queue_capacity", model="tiny", version="1") for samples in each)
    for client in clients.values():
        client.close()


def test_a_new_token_works_on_every_front_end(split):
    token, digest = new_token()
    with open(split.tokens_file, "a") as fh:
        fh.write("\n" + token_entry("later", digest, ["infer"], []))
    os.kill(split.server.proc.pid, signal.SIGHUP)
    clients = clients_on_each_frontend(split)
    image = encode(random_image(3))
    for pid in clients:
        with split.client(token=token) as client:
            def works() -> bool:
                try:
                    return client.predict(image, model="tiny").model == "tiny"
                except FramewireError:
                    return False
            wait_until(works, 20, f"the new token on front end {pid}")
        clients[pid].close()
    assert split.server.proc.poll() is None


def test_hot_reload_reaches_every_front_end(split, tmp_path):
    repo = Path(re.search(r"--repo (\S+)", " ".join(split.server.proc.args)).group(1))
    export_tiny(repo, "tiny", 2, seed=11)
    clients = clients_on_each_frontend(split)
    image = encode(random_image(4))
    try:
        for client in clients.values():
            wait_until(lambda: client.predict(image, model="tiny").version == 2, 60, "version 2 served")
    finally:
        for client in clients.values():
            client.close()


def test_repository_calls_hold_for_every_front_end(split):
    """RepositoryModelUnload / Load reach one front end; it passes them on to
    the others, so the model leaves and comes back everywhere."""
    from framewire.oip import grpc_service_pb2 as oip
    from framewire.oip import grpc_service_pb2_grpc

    clients = clients_on_each_frontend(split)
    metadata = (("authorization", f"Bearer {split.admin}"),)
    caller = next(iter(clients.values()))
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(caller.channel)

    def ready_everywhere() -> list[bool]:
        return [grpc_service_pb2_grpc.GRPCInferenceServiceStub(c.channel).ModelReady(
            oip.ModelReadyRequest(name="slow"), metadata=metadata, timeout=30).ready for c in clients.values()]

    assert ready_everywhere() == [True, True]
    stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="slow"), metadata=metadata, timeout=60)
    assert ready_everywhere() == [False, False]
    stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="slow"), metadata=metadata, timeout=120)
    assert ready_everywhere() == [True, True]
    # A reader's token may not, on any front end.
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="slow"), timeout=30,
                                   metadata=(("authorization", f"Bearer {split.token}"),))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ready_everywhere() == [True, True]
    for client in clients.values():
        client.close()


def test_stream_order_holds_on_its_front_end(split):
    with split.client() as client:
        frames = [encode(random_image(i, 40, 40)) for i in range(20)]
        answers = list(client.stream(iter(frames), model="tiny"))
    assert [a.frame_number for a in answers] == list(range(20))


def test_a_killed_front_end_is_restarted_while_the_other_keeps_serving(split):
    clients = clients_on_each_frontend(split)
    victim, survivor = sorted(clients)
    image = encode(random_image(5))
    errors: list = []
    served = 0
    stop = threading.Event()

    def keep_calling() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                clients[survivor].predict(image, model="tiny")
                served += 1
            except FramewireError as exc:
                errors.append(exc)

    for _ in range(3):  # counts the victim takes with it
        clients[victim].predict(image, model="tiny")
    counted = value(scrape(split.metrics_url), "framewire_requests_total", model="tiny", code="OK")
    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: gone(victim), 10, "the killed front end gone")
        wait_until(lambda: "front end 1/2" in split.server.output().split("exited with code")[-1]
                   or len([f for f in split.frontends().values() if f["pid"] != victim]) == 2, 120,
                   "the front end started again")
        wait_until(lambda: len(split.frontends()) == 2 and victim not in {f["pid"] for f in split.frontends().values()},
                   120, "the new front end up")
    finally:
        stop.set()
        caller.join(60)
    assert not errors, errors[:3]
    assert served > 0
    assert "exited with code -9; starting it again" in split.server.output()
    # The killed front end's counts stay in /metrics: the sums never step back.
    assert value(scrape(split.metrics_url), "framewire_requests_total", model="tiny", code="OK") >= counted + served
    new = clients_on_each_frontend(split)
    assert survivor in new and victim not in new
    for client in [*clients.values(), *new.values()]:
        client.close()


def test_a_killed_worker_is_started_again_for_every_front_end(split):
    """The shared worker dies: the supervisor starts it again, each front end
    reattaches and reloads its versions there (the worker loads each once),
    and both front ends serve again; nothing but the calls in flight failed."""
    clients = clients_on_each_frontend(split)
    status = json.loads(next(iter(clients.values())).server_status().status_json)
    (worker,) = [p["pid"] for p in status["processes"] if p["role"] == "worker"]
    image = encode(random_image(6))
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: gone(worker), 10, "the killed worker gone")

    def serves(client: Client) -> bool:
        try:
            return client.predict(image, model="tiny").model == "tiny"
        except FramewireError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE, exc  # retryable while it comes back
            return False

    for client in clients.values():
        wait_until(lambda: serves(client), 120, "the front end serving again")
    output = split.server.output()
    assert re.search(r"worker cpu/0 \(pid \d+\) exited with code -9; starting it again", output), output[-3000:]

    def workers() -> set[int]:  # the status document is sampled every second
        status = json.loads(next(iter(clients.values())).server_status().status_json)
        return {p["pid"] for p in status["processes"] if p["role"] == "worker"}

    wait_until(lambda: len(workers() - {worker}) == 1, 10, "the status listing the new worker once")
    for client in clients.values():
        client.close()


def test_a_load_that_overruns_in_the_shared_worker_fails_alone_on_every_front_end(split):
    """Both front ends load a version that never finishes loading: the
    worker is killed at the budget (5 s for `hang`, from the config file),
    the supervisor starts it again, the version is UNAVAILABLE on both front
    ends, and the models already serving serve again on both."""
    from framewire.v1 import inference_pb2 as pb

    clients = clients_on_each_frontend(split)
    image = encode(random_image(7))
    repo = Path(re.search(r"--repo (\S+)", " ".join(split.server.proc.args)).group(1))
    hanging_artifact(repo / "tiny" / "1" / "model.fwa", repo)

    def hang_state(client: Client):
        return [m.versions[0].state for m in client.list_models().models if m.name == "hang" and m.versions]

    def serves(client: Client) -> bool:
        try:
            return client.predict(image, model="tiny").model == "tiny"
        except FramewireError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
            return False

    for client in clients.values():
        wait_until(lambda: hang_state(client) == [pb.MODEL_STATE_UNAVAILABLE], 120, "hang UNAVAILABLE")
    for client in clients.values():
        wait_until(lambda: serves(client), 120, "tiny served again")
    assert "longer than its 5-second budget (--load-timeout-seconds)" in split.server.output()
    for client in clients.values():
        client.close()


def test_sigterm_drains_every_front_end(split):
    """Last in this module: the server stops. Calls in flight when SIGTERM
    arrives are answered whole; one that arrives after it is refused with
    UNAVAILABLE (clients retry elsewhere); the supervisor exits 0 and leaves
    no process."""
    clients = clients_on_each_frontend(split)
    images = [encode(random_image(i, 64, 64)) for i in range(4)]
    pids = [f["pid"] for f in split.frontends().values()]
    staged = value(scrape(split.metrics_url), "framewire_payload_bytes_total", model="slow")

    def call(client: Client):
        try:
            return client.batch_predict(images, model="slow")
        except FramewireError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, c) for c in clients.values() for _ in range(4)]
        wait_until(lambda: value(scrape(split.metrics_url), "framewire_payload_bytes_total", model="slow") > staged,
                   30, "a batch of the calls in a worker")
        code = split.server.terminate(60)
        outcomes = [f.result(timeout=60) for f in futures]
    assert code == 0, split.server.output()[-3000:]
    answered = [o for o in outcomes if isinstance(o, list)]
    assert answered and all(len(a) == 4 for a in answered)
    assert all(o == grpc.StatusCode.UNAVAILABLE for o in outcomes if not isinstance(o, list)), outcomes
    for pid in pids:
        wait_until(lambda: gone(pid), 10, f"front end {pid} gone")
    for client in clients.values():
        client.close()


def test_a_server_that_cannot_start_says_why_once_and_exits_2(tmp_path):
    """The start-up checks run in the supervisor, before any front end starts."""
    done = subprocess.run([sys.executable, "-m", "framewire", "serve", "--repo", str(tmp_path / "missing"),
                           "--frontends", "2", "--port", "0", "--metrics-port", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("framewire serve: ") == 1 and "missing" in done.stderr


def test_a_front_end_that_cannot_start_stops_the_server_instead_of_restarting_forever(tmp_path, tiny_repo):
    """A front end that exits before it serves (here: a certificate file that
    is no certificate, which only binding the port finds) stops the whole
    server with exit code 2; the supervisor does not start it again."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    done = subprocess.run([sys.executable, "-m", "framewire", "serve", "--repo", str(tiny_repo), "--frontends", "2",
                           "--port", "0", "--metrics-port", "-1", "--tls-cert", str(bad), "--tls-key", str(bad)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "exited with code 2 while starting; stopping" in done.stderr
    assert "starting it again" not in done.stderr

