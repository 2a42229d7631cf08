"""ServeConfig: defaults < TOML < environment < flags, validated with the bad value named."""

from __future__ import annotations

import argparse
import os

import pytest

from framewire.service.config import (ConfigError, ServeConfig, add_arguments, instance_plan, load_config, usable_cpus,
                                      parse_version_policy)


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


def test_defaults_are_valid():
    config = load_config(parse(), environ={})
    assert config.max_batch_size == 32 and config.device == "auto" and config.version_policy == "latest:1"


def test_file_then_environment_then_flags(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('max_batch_size = 8\nport = 9000\nmodels = ["a", "b"]\nwarmup = false\n'
                    '[model.a]\nversion_policy = "all"\nmax_queue_delay_us = 10\n')
    config = load_config(
        parse("--config", str(toml), "--port", "9100"),
        environ={"FRAMEWIRE_PORT": "9050", "FRAMEWIRE_MAX_QUEUE_SIZE": "77", "FRAMEWIRE_CHANNELS_LAST": "false"},
    )
    assert config.port == 9100  # flag beats environment and file
    assert config.max_queue_size == 77 and config.channels_last is False  # environment
    assert config.max_batch_size == 8 and config.models == ["a", "b"] and config.warmup is False  # file
    a = config.for_model("a")
    assert a.version_policy == "all" and a.max_queue_delay_us == 10 and a.max_batch_size == 8
    assert config.for_model("b").version_policy == "latest:1"


def test_flags_and_environment_beat_the_files_model_tables_which_beat_its_top_level(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('max_batch_size = 32\nmax_queue_delay_us = 2000\nversion_policy = "latest:1"\n'
                    '[model.efficientnet_lite0]\nmax_batch_size = 64\nversion_policy = "all"\n'
                    'max_queue_delay_us = 500\nmax_queue_size = 4096\n')
    config = load_config(parse("--config", str(toml), "--max-queue-delay-us", "100"),
                         environ={"FRAMEWIRE_MAX_BATCH_SIZE": "16"})
    lite = config.for_model("efficientnet_lite0")
    assert lite.max_batch_size == 16  # the environment beats the model's table
    assert lite.max_queue_delay_us == 100  # a flag beats it too
    assert lite.version_policy == "all" and lite.max_queue_size == 4096  # the table beats the file's top level
    other = config.for_model("resnet18")
    assert (other.max_batch_size, other.max_queue_delay_us, other.version_policy) == (16, 100, "latest:1")
    assert config.shadowed_overrides == [
        "[model.efficientnet_lite0] max_batch_size = 64 is overridden by FRAMEWIRE_MAX_BATCH_SIZE=16",
        "[model.efficientnet_lite0] max_queue_delay_us = 500 is overridden by --max-queue-delay-us 100",
    ]
    # Without the environment and the flag, the model's table wins over the top level.
    alone = load_config(parse("--config", str(toml)), environ={}).for_model("efficientnet_lite0")
    assert (alone.max_batch_size, alone.max_queue_delay_us) == (64, 500)


def test_the_latency_budget_is_server_wide_and_per_model(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("latency_budget_ms = 100\n[model.camera]\nlatency_budget_ms = 40\n[model.scoring]\n"
                    "latency_budget_ms = 0\n")
    config = load_config(parse("--config", str(toml)), environ={})
    assert config.latency_budget == pytest.approx(0.1)
    assert config.for_model("camera").latency_budget == pytest.approx(0.04)
    assert config.for_model("scoring").latency_budget is None  # 0: batches by --max-queue-delay-us
    assert load_config(parse(), environ={}).latency_budget is None  # off by default
    toml.write_text("[model.camera]\nlatency_budget_ms = -1\n")
    with pytest.raises(ConfigError, match="latency_budget_ms=-1"):
        load_config(parse("--config", str(toml)), environ={})


def test_the_precedence_is_stated_in_serve_help():
    from framewire.cli import build_parser

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    text = " ".join(serve.format_help().split())
    assert ("flags, environment, [model.<name>] in the file, top level of the file, defaults" in text)


def test_list_flags_split_on_commas():
    config = load_config(parse("--models", "x,y", "--preferred-batch-sizes", "4,8"), environ={})
    assert config.models == ["x", "y"] and config.preferred_batch_sizes == [4, 8]


@pytest.mark.parametrize("flags, message", [
    (("--max-batch-size", "0"), "max_batch_size=0: must be 1..4096"),
    (("--device", "tpu"), "device='tpu': use auto, cpu, cuda or cuda:N"),
    (("--dtype", "int8"), "dtype='int8'"),
    (("--port", "70000"), "port=70000"),
    (("--max-queue-size", "4", "--max-batch-size", "8"), "max_queue_size=4: must be at least max_batch_size (8)"),
    (("--version-policy", "newest"), "version_policy='newest'"),
    (("--preferred-batch-sizes", "64", "--max-batch-size", "32"), "preferred_batch_sizes"),
    (("--max-batch-size", "lots"), "max_batch_size='lots' (from --max-batch-size): expected int"),
    (("--worker-nice", "20"), "worker_nice=20: must be between 0 and 19"),
    (("--latency-budget-ms", "-5"), "latency_budget_ms=-5.0: must be 0 (off) or a positive number of milliseconds"),
    (("--latency-budget-ms", "nan"), "latency_budget_ms=nan"),
])
def test_bad_values_are_named(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(parse(*flags), environ={})


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError, match=r"\$FRAMEWIRE_WARMUP"):
        load_config(parse(), environ={"FRAMEWIRE_WARMUP": "maybe"})


def test_unknown_file_settings_are_refused(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("max_batch = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_batch'"):
        load_config(parse("--config", str(toml)), environ={})
    toml.write_text("[model.a]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"\[model.a\] sets \['port'\]"):
        load_config(parse("--config", str(toml)), environ={})
    toml.write_text("this is not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(parse("--config", str(toml)), environ={})


def test_version_policies():
    assert parse_version_policy("latest") == ("latest", (1,))
    assert parse_version_policy("latest:3") == ("latest", (3,))
    assert parse_version_policy("all") == ("all", ())
    assert parse_version_policy("specific:1,4") == ("specific", (1, 4))
    with pytest.raises(ConfigError):
        parse_version_policy("latest:0")


def test_every_setting_has_a_documented_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for name, f in ServeConfig.__dataclass_fields__.items():
        if not f.metadata.get("internal"):
            assert "--" + name.replace("_", "-") in text
            assert "FRAMEWIRE_" + name.upper() in text


def test_auto_instances_split_the_cpus_between_two_worker_processes():
    auto = ServeConfig()
    assert instance_plan(auto, on_cuda=False, cpus=2) == (2, 1)
    assert instance_plan(auto, on_cuda=False, cpus=16) == (2, 8)
    assert instance_plan(auto, on_cuda=False, cpus=1) == (1, 1)
    assert instance_plan(auto, on_cuda=True, cpus=16) == (1, 0)  # one instance per GPU, torch's threads
    assert instance_plan(ServeConfig(runner="thread"), on_cuda=False, cpus=16) == (1, 0)
    assert instance_plan(ServeConfig(instances_per_device=3), on_cuda=False, cpus=16) == (3, 5)
    assert instance_plan(ServeConfig(instances_per_device=3, cpu_threads=2), on_cuda=False, cpus=16) == (3, 2)
    assert instance_plan(ServeConfig(instances_per_device=4), on_cuda=True, cpus=16) == (4, 0)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs of quota: two threads' worth, rounded up
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1, no limit
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({}, None),  # no cgroup files at all
])
def test_a_container_cpu_limit_caps_the_usable_cpus(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(str(tmp_path)) == (affinity if expected is None else min(affinity, expected))
