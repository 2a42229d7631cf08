"""The one client connection module: settings become channel options and
metadata one way, the CLI flags become a Connection, and the retry policy
waits and gives up as it says (driven with a fake sleep and jitter)."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from framewire.cli import build_parser
from framewire.connection import (Connection, RetryPolicy, Retrying, as_connection, connection_from_args,
                                  connection_options)

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE, DEADLINE = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = ""):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return (("x-request-id", "req-7"),)


def failing(*outcomes):
    """An attempt that raises (or returns) each outcome in turn, counting calls."""
    calls = []

    def attempt():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt, calls


def test_try_again_failures_are_retried_with_doubling_jittered_waits_up_to_a_cap():
    waits: list[float] = []
    policy = RetryPolicy(attempts=6, backoff=0.1, max_backoff=0.3)
    attempt, calls = failing(*[Failure(UNAVAILABLE)] * 5, "answer")
    assert policy.run(attempt, sleep=waits.append, draw=lambda: 0.5) == "answer"
    assert len(calls) == 6
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])  # draw 0.5: a jitter factor of exactly 1
    low, high = [], []
    RetryPolicy(attempts=2, backoff=0.2).run(failing(Failure(UNAVAILABLE), 1)[0], sleep=low.append, draw=lambda: 0.0)
    RetryPolicy(attempts=2, backoff=0.2).run(failing(Failure(UNAVAILABLE), 1)[0], sleep=high.append,
                                             draw=lambda: 0.999)
    assert low == pytest.approx([0.1]) and high == pytest.approx([0.2998])  # half to one and a half times


def test_the_last_attempt_and_other_codes_raise_at_once():
    waits: list[float] = []
    attempt, calls = failing(*[Failure(UNAVAILABLE, "down")] * 3)
    with pytest.raises(Failure) as info:
        RetryPolicy(attempts=3).run(attempt, sleep=waits.append)
    assert info.value.details() == "down" and len(calls) == 3 and len(waits) == 2

    attempt, calls = failing(Failure(grpc.StatusCode.INVALID_ARGUMENT), "never")
    with pytest.raises(Failure):
        RetryPolicy(attempts=5).run(attempt, sleep=waits.append)
    assert len(calls) == 1


def test_once_codes_are_retried_once_per_operation():
    policy = RetryPolicy(attempts=10, once_codes=frozenset({DEADLINE}))
    attempt, calls = failing(Failure(DEADLINE), Failure(UNAVAILABLE), Failure(DEADLINE), "never")
    with pytest.raises(Failure) as info:
        policy.run(attempt, sleep=lambda s: None)
    assert info.value.code() == DEADLINE and len(calls) == 3


def test_on_retry_sees_each_wait_and_can_give_up():
    seen = []
    attempt, calls = failing(Failure(UNAVAILABLE), Failure(UNAVAILABLE), "never")
    with pytest.raises(Failure):
        RetryPolicy(attempts=None, backoff=1.0).run(
            attempt, on_retry=lambda error, delay: seen.append((error.code(), delay)) or len(seen) < 2,
            sleep=lambda s: None, draw=lambda: 0.5)
    assert seen == [(UNAVAILABLE, 1.0), (UNAVAILABLE, 2.0)] and len(calls) == 2


def test_progress_resets_the_wait_and_the_count_of_failures_in_a_row():
    waits: list[float] = []
    retrying = Retrying(RetryPolicy(attempts=3, backoff=1.0, max_backoff=100), sleep=waits.append,
                        draw=lambda: 0.5)
    outcomes = iter([Failure(UNAVAILABLE), Failure(UNAVAILABLE), "progress", Failure(UNAVAILABLE),
                     Failure(UNAVAILABLE), "done"])

    def attempt():  # a stream: an answer is progress, but the call still breaks afterwards
        outcome = next(outcomes)
        if outcome == "progress":
            retrying.reset()
            outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert retrying.run(attempt) == "done"
    assert waits == [1.0, 2.0, 1.0, 2.0]  # three failures in a row would have given up


def test_bad_policies_and_settings_name_the_value():
    with pytest.raises(ValueError, match="attempts=0"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="max_backoff=0.1 is below backoff=1"):
        RetryPolicy(backoff=1, max_backoff=0.1)
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        Connection("h:1", tls_cert="client.pem")
    with pytest.raises(ValueError, match="keepalive_seconds=0"):
        Connection("h:1", keepalive_seconds=0)
    with pytest.raises(ValueError, match="no server given"):
        Connection("")


def test_settings_become_channel_options_and_metadata():
    connection = Connection("h:1", token="fw_x", metadata=[("x-request-id", "a")], max_message_bytes=1000,
                            keepalive_seconds=300, server_name="framewire.test", reconnect_backoff=(0.2, 2.0),
                            channel_options=[("grpc.max_send_message_length", 10)])
    options = connection.options()
    assert ("grpc.max_receive_message_length", 1000) in options
    assert ("grpc.keepalive_time_ms", 300_000) in options
    assert ("grpc.ssl_target_name_override", "framewire.test") in options
    assert ("grpc.max_reconnect_backoff_ms", 2000) in options
    assert options[-1] == ("grpc.max_send_message_length", 10)  # given options win, being last
    assert connection.call_metadata == (("x-request-id", "a"), ("authorization", "Bearer fw_x"))
    assert not connection.tls and Connection("h:1", tls_ca="ca.pem").tls
    assert not any(name.startswith("grpc.keepalive") for name, _ in Connection("h:1").options())
    other = connection.with_target("g:2")
    assert other.target == "g:2" and other.token == "fw_x"
    assert as_connection(connection) is connection
    assert as_connection(connection, token="fw_y").call_metadata[-1] == ("authorization", "Bearer fw_y")
    assert as_connection("g:3", token="t").target == "g:3"


def test_the_cli_flags_become_a_connection():
    args = build_parser().parse_args(["predict", "--server", "h:9", "--tls-ca", "ca.pem", "--tls-cert", "c.pem",
                                      "--tls-key", "k.pem", "--tls-server-name", "fw.test", "--token", "fw_t",
                                      "--keepalive-seconds", "400", "--max-message-bytes", "2048",
                                      "--model", "m", "x.jpg"])
    connection = connection_from_args(args)
    assert (connection.target, connection.tls_ca, connection.tls_cert, connection.tls_key) == \
        ("h:9", "ca.pem", "c.pem", "k.pem")
    assert (connection.server_name, connection.token, connection.keepalive_seconds, connection.max_message_bytes) \
        == ("fw.test", "fw_t", 400.0, 2048)
    status = connection_from_args(build_parser().parse_args(["status", "--server", "h:8"]))
    assert status.max_message_bytes == Connection("x:1").max_message_bytes and not status.tls


def test_errors_say_which_limit_a_refused_message_broke():
    connection = Connection("h:1")
    error = connection.error(Failure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     "Received message larger than max (5242900 vs. 4194304)"), probe=False)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.request_id == "req-7"
    assert error.message.startswith("the request is 5,242,900 bytes, over the server's message limit of 4,194,304")
    plain = connection.error(Failure(grpc.StatusCode.NOT_FOUND, "model 'x' is not served here"))
    assert str(plain) == "NOT_FOUND: model 'x' is not served here"


def test_channels_are_built_only_in_the_connection_module():
    builders = re.compile(r"\b(insecure_channel|secure_channel|ssl_channel_credentials)\(")
    places = [path for folder in ("framewire", "load_tests") for path in sorted((ROOT / folder).rglob("*.py"))
              if builders.search(path.read_text())]
    assert [p.relative_to(ROOT).as_posix() for p in places] == ["framewire/connection.py"]


def test_every_verb_that_connects_takes_max_message_bytes():
    for argv in (["score", "imgs", "--model", "m", "--out", "r.jsonl"], ["stream", "0", "--model", "m"],
                 ["status"], ["top"], ["describe", "--model", "m"]):
        args = build_parser().parse_args(argv + ["--max-message-bytes", "4096"])
        assert connection_options(args)["max_message_bytes"] == 4096, argv


def test_max_message_bytes_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--model", "m", "x.jpg", "--max-message-bytes", "0"])
    assert "expected a positive number of bytes, got '0'" in capsys.readouterr().err
