"""TLS, mutual TLS and bearer tokens with scopes, on both APIs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from framewire.cli import main as cli
from framewire.client import Client, FramewireError
from framewire.service.auth import new_token, token_entry
from support.artifacts import export_tiny
from support.certs import CertificateAuthority
from support.images import encode, random_image
from support.server import RunningServer
from support.waiting import wait_until

IMAGE = encode(random_image(1))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(root, "good"), CertificateAuthority(root, "other")
    return {
        "ca": ca.path,
        "server": ca.issue("framewire.test", server=True),
        "client": ca.issue("camera-7", server=False),
        "stranger": other.issue("intruder", server=False),
    }


def test_tls_serves_clients_that_trust_the_ca(tiny_repo, pki):
    with RunningServer(repo=str(tiny_repo), tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)) as server:
        with Client(server.address, tls_ca=pki["ca"], server_name="framewire.test") as c:
            assert c.predict(IMAGE, model="tiny").classes
        with Client(server.address, retries=0, timeout=5) as plaintext, pytest.raises(FramewireError) as info:
            plaintext.predict(IMAGE, model="tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the server speaks TLS and this client does not: pass --tls-ca" in info.value.message


def test_a_tls_client_against_a_plaintext_server_is_told_so(tiny_repo, pki, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(IMAGE)
    with RunningServer(repo=str(tiny_repo), runner="thread") as server:
        with Client(server.address, tls_ca=pki["ca"], retries=0, timeout=5) as c, \
                pytest.raises(FramewireError) as info:
            c.predict(IMAGE, model="tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the server speaks plaintext (no TLS) and this client speaks TLS: leave out --tls-ca" in info.value.message
        done = subprocess.run([shutil.which("framewire"), "predict", "--server", server.address, "--tls-ca",
                               str(pki["ca"]), "--model", "tiny", str(image)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1 and "the server speaks plaintext (no TLS)" in done.stderr
        scored = subprocess.run([shutil.which("framewire"), "score", str(image), "--server", server.address,
                                 "--tls-ca", str(pki["ca"]), "--model", "tiny", "--out", str(tmp_path / "r.jsonl"),
                                 "--wait-ready", "0"], capture_output=True, text=True, timeout=120)
        assert scored.returncode == 1 and "the server speaks plaintext (no TLS)" in scored.stderr
        streamed = subprocess.run([shutil.which("framewire"), "stream", str(tmp_path), "--server", server.address,
                                   "--tls-ca", str(pki["ca"]), "--model", "tiny", "--frames", "3",
                                   "--drain-seconds", "3", "--quiet"], capture_output=True, text=True, timeout=120)
        assert streamed.returncode == 1 and "the server speaks plaintext (no TLS)" in streamed.stderr
    with socket.socket() as nobody:  # nothing listens: no guess about what it speaks
        nobody.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{nobody.getsockname()[1]}"
    with Client(address, retries=0, timeout=5) as c, pytest.raises(FramewireError) as info:
        c.predict(IMAGE, model="tiny")
    assert "speaks" not in info.value.message


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(tiny_repo, pki):
    with RunningServer(repo=str(tiny_repo), tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key),
                       tls_client_ca=str(pki["ca"])) as server:
        with Client(server.address, tls_ca=pki["ca"], tls_cert=pki["client"].cert, tls_key=pki["client"].key,
                    server_name="framewire.test") as c:
            assert c.predict(IMAGE, model="tiny").classes
        for cert in (None, pki["stranger"]):
            kwargs = {"tls_cert": cert.cert, "tls_key": cert.key} if cert else {}
            with Client(server.address, tls_ca=pki["ca"], server_name="framewire.test", retries=0, timeout=5,
                        **kwargs) as c, pytest.raises(FramewireError) as info:
                c.predict(IMAGE, model="tiny")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def tls_with_token(tmp_path_factory, tiny_repo, pki):
    """A server speaking TLS that requires a token; yields it and the token."""
    token, digest = new_token()
    tokens = tmp_path_factory.mktemp("tls-tokens") / "tokens.toml"
    tokens.write_text(token_entry("jobs", digest, ["infer"], []))
    with RunningServer(repo=str(tiny_repo), tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key),
                       tokens_file=str(tokens)) as server:
        yield server, token


def test_the_cli_speaks_tls_with_a_token(tls_with_token, pki, tmp_path, capsys):
    server, token = tls_with_token
    image = tmp_path / "x.png"
    image.write_bytes(IMAGE)
    args = ["--server", server.address, "--tls-ca", str(pki["ca"]), "--tls-server-name", "framewire.test"]
    assert cli(["predict", *args, "--token", token, "--model", "tiny", str(image)]) == 0
    assert "class" in capsys.readouterr().out
    assert cli(["predict", *args, "--model", "tiny", str(image)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli(["status", *args, "--token", token]) == 0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_repo):
    """A server with two models and three tokens."""
    repo = tmp_path_factory.mktemp("guarded")
    export_tiny(repo, "tiny", 1)
    export_tiny(repo, "other", 1, seed=3)
    tokens = {name: new_token() for name in ("reader", "limited", "ops")}
    path = repo.parent / f"{repo.name}-tokens.toml"
    path.write_text(
        token_entry("reader", tokens["reader"][1], ["infer"], [])
        + token_entry("limited", tokens["limited"][1], ["infer"], ["tiny"])
        + token_entry("ops", tokens["ops"][1], ["admin", "infer"], [])
    )
    with RunningServer(repo=str(repo), tokens_file=str(path), model_health=False) as server:
        yield server, {name: value[0] for name, value in tokens.items()}, path


def native(server, token=None) -> Client:
    return Client(server.address, token=token, retries=0)


def oip(server, token=None):
    headers = {"authorization": f"Bearer {token}"} if token else None
    return triton.InferenceServerClient(server.address), headers


def oip_infer(server, token, model="tiny"):
    client, headers = oip(server, token)
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(random_image(0, 32, 32)[None])
    return client.infer(model, [tensor], headers=headers)


@pytest.mark.parametrize("token", [None, "fw_wrong"])
def test_no_token_or_a_wrong_one_is_unauthenticated_on_both_apis(guarded, token):
    server, _, _ = guarded
    with native(server, token) as c, pytest.raises(FramewireError) as info:
        c.predict(IMAGE, model="tiny")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in info.value.message
    with pytest.raises(InferenceServerException) as info:
        oip_infer(server, token)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"


def test_a_valid_token_works_on_both_apis(guarded):
    server, tokens, _ = guarded
    with native(server, tokens["reader"]) as c:
        assert c.predict(IMAGE, model="other").classes
    assert oip_infer(server, tokens["reader"], "other").as_numpy("logits").shape == (1, 5)


def test_an_infer_token_cannot_administer(guarded):
    server, tokens, _ = guarded
    client, headers = oip(server, tokens["reader"])
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("tiny", headers=headers)
    assert info.value.status() == "StatusCode.PERMISSION_DENIED" and "'admin' scope" in info.value.message()
    assert client.is_model_ready("tiny", headers=headers)


def test_an_admin_token_can(guarded):
    server, tokens, _ = guarded
    client, headers = oip(server, tokens["ops"])
    client.unload_model("other", headers=headers)
    assert not client.is_model_ready("other", headers=headers)
    client.load_model("other", headers=headers)
    assert client.is_model_ready("other", headers=headers)


def test_a_model_limited_token_cannot_use_another_model(guarded):
    server, tokens, _ = guarded
    with native(server, tokens["limited"]) as c:
        assert c.predict(IMAGE, model="tiny").classes
        with pytest.raises(FramewireError) as info:
            c.predict(IMAGE, model="other")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED and "limited to tiny" in info.value.message
        assert [m.name for m in c.list_models().models] == ["tiny"]
        status = c.server_status()
        assert [m.model for m in status.models] == ["tiny"]
        document = json.loads(status.status_json)  # what `framewire status` and `top` print
        assert {m["model"] for m in document["models"]} == {"tiny"} and "other" not in document["requests_by_code"]
        assert {key.partition(":")[0] for key in document["sample"]["models"]} == {"tiny"}
        results = list(c.stream([IMAGE], model="other"))
        assert results[0].code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(InferenceServerException) as info:
        oip_infer(server, tokens["limited"], "other")
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    client, headers = oip(server, tokens["limited"])
    assert [m.name for m in client.get_model_repository_index(headers=headers).models] == ["tiny"]


def test_the_repository_index_hides_unloaded_models_from_a_token_limited_to_others(guarded):
    server, tokens, _ = guarded
    admin, admin_headers = oip(server, tokens["ops"])
    admin.unload_model("other", headers=admin_headers)
    try:
        client, headers = oip(server, tokens["limited"])
        assert [m.name for m in client.get_model_repository_index(headers=headers).models] == ["tiny"]
        listed = {(m.name, m.state) for m in admin.get_model_repository_index(headers=admin_headers).models}
        assert ("other", "UNAVAILABLE") in listed  # an unrestricted token still sees it
    finally:
        admin.load_model("other", headers=admin_headers)


def test_per_model_health_can_be_turned_off_so_probes_cannot_list_models(guarded):
    """Health checks need no token; with --no-model-health a served and an unknown
    model's health service name get the same answer."""
    server, _, _ = guarded
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("framewire.model.tiny", "framewire.model.no_such_model"):
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, service
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_checks_stay_open(guarded):
    server, _, _ = guarded
    with grpc.insecure_channel(server.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    client, _ = oip(server)
    assert client.is_server_live() and client.is_server_ready()


def test_a_revoked_token_is_refused_after_the_file_changes(guarded):
    server, tokens, path = guarded
    original = path.read_text()
    with native(server, tokens["reader"]) as c:
        assert c.predict(IMAGE, model="tiny").classes
        path.write_text(original.replace(token_block(original, "reader"), ""))

        def refused() -> bool:
            try:
                c.predict(IMAGE, model="tiny")
            except FramewireError as exc:
                assert exc.code == grpc.StatusCode.UNAUTHENTICATED
                return True
            return False

        wait_until(refused, 10, "the revoked token to be refused", interval=0.1)
    path.write_text(original)


def token_block(text: str, name: str) -> str:
    start = text.index(f'[[token]]\nname = "{name}"')
    end = text.find("[[token]]", start + 1)
    return text[start:] if end < 0 else text[start:end]


def wait_until_accepted(server, token) -> None:
    with native(server, token) as c:
        def accepted():
            try:
                c.predict(IMAGE, model="tiny")
            except FramewireError:
                return False
            return True

        wait_until(accepted, 10, "the token to be accepted", interval=0.1)


def test_a_broken_tokens_file_keeps_the_previous_tokens(guarded, caplog):
    server, tokens, path = guarded
    wait_until_accepted(server, tokens["reader"])  # the file is in force, as the last test left it
    original = path.read_text()
    path.write_text("this is [not toml")
    try:
        with caplog.at_level("ERROR", logger="framewire.auth"), native(server, tokens["reader"]) as c:
            def tried_the_broken_file() -> bool:
                assert c.predict(IMAGE, model="tiny").classes  # the previous tokens stay in force
                return any("could not be read again" in r.getMessage() for r in caplog.records)

            wait_until(tried_the_broken_file, 10, "the server to try reading the broken tokens file", interval=0.1)
            assert c.predict(IMAGE, model="tiny").classes
    finally:
        path.write_text(original)


def test_deleting_the_tokens_file_fails_closed(guarded):
    """A missing tokens file accepts no token (deleting it revokes them all);
    restoring it brings its tokens back. Health checks stay open meanwhile."""
    server, tokens, path = guarded
    wait_until_accepted(server, tokens["reader"])
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        with native(server, tokens["reader"]) as c:
            def refused():
                try:
                    c.predict(IMAGE, model="tiny")
                except FramewireError as exc:
                    assert exc.code == grpc.StatusCode.UNAUTHENTICATED, exc
                    return True
                return False

            wait_until(refused, timeout=10, what="the tokens to be refused")
        with grpc.insecure_channel(server.address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        aside.rename(path)
    wait_until_accepted(server, tokens["reader"])


def test_plaintext_off_loopback_is_warned_about(tiny_repo, caplog):
    with caplog.at_level("WARNING", logger="framewire.server"):
        with RunningServer(repo=str(tiny_repo), host="0.0.0.0"):
            pass
    assert any("serving plaintext on 0.0.0.0" in r.getMessage() for r in caplog.records)


def test_sighup_reloads_the_tokens_file(tiny_repo, tmp_path):
    import os
    import signal
    import subprocess

    from support.server import ServerProcess

    token, digest = new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token_entry("first", digest, ["infer"], []))
    server = ServerProcess("--repo", str(tiny_repo), "--device", "cpu", "--tokens-file", str(tokens),
                           "--instances-per-device", "1")
    try:
        second = subprocess.run(["framewire", "token", "--name", "second", "--scope", "infer", "--append",
                                 str(tokens)], capture_output=True, text=True, check=True)
        new = second.stdout.split("token: ")[1].strip()
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded 2 token(s)" in server.output(), 10, "the server to log the reloaded tokens")
        with Client(server.address, token=new) as c:
            assert c.predict(IMAGE, model="tiny").classes
    finally:
        server.close()


def test_score_and_stream_speak_tls_with_a_token(tls_with_token, pki, tmp_path):
    import json
    import subprocess

    server, token = tls_with_token
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        (frames / f"{i:03d}.png").write_bytes(encode(random_image(i)))
    security = ["--server", server.address, "--tls-ca", str(pki["ca"]), "--tls-server-name", "framewire.test",
                "--token", token]
    out = tmp_path / "scores.jsonl"
    done = subprocess.run(["framewire", "score", str(frames), "--model", "tiny", "--out", str(out), *security],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(row["error"] is None for row in rows)
    streamed = tmp_path / "stream.jsonl"
    done = subprocess.run(["framewire", "stream", str(frames), "--model", "tiny", "--fps", "0", "--drop", "none",
                           "--quiet", "--out", str(streamed), *security], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["status"] for line in streamed.read_text().splitlines()] == ["ok"] * 4
