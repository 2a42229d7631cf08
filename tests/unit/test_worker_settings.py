"""The worker-settings message: built once from the server's config, checked on both sides."""

from __future__ import annotations

import json

import pytest

from framewire.service.config import ServeConfig
from framewire.service.worker_settings import SettingsError, WorkerSettings


def test_settings_come_from_the_server_config_and_survive_json():
    config = ServeConfig(repo="r", jpeg_draft=True, cuda_graphs=True, cpu_threads=3, max_image_pixels=1234,
                         worker_nice=5).validate()
    settings = WorkerSettings.from_config(config, model_id="m:1", artifact="m.fwa", device="cuda:1", dtype="float16")
    assert (settings.jpeg_draft, settings.cuda_graphs, settings.cpu_threads, settings.max_image_pixels,
            settings.nice) == (True, True, 3, 1234, 5)
    assert settings.resolved_decoder == "torchvision"
    assert WorkerSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert settings.replace(device="cpu").resolved_decoder == "pil"


@pytest.mark.parametrize("change, message", [
    ({"surprise": 1}, r"unknown worker settings \['surprise'\]"),
    ({"dtype": "float64"}, "dtype='float64': use one of float32, float16, bfloat16"),
    ({"cpu_threads": "2"}, r"cpu_threads='2': expected int"),
    ({"jpeg_draft": 1}, "jpeg_draft=1: expected bool"),
    ({"device": "tpu"}, "device='tpu': use cpu or cuda:N"),
    ({"decoder": "nvjpeg"}, "decoder='nvjpeg': use one of auto, pil, torchvision"),
    ({"nice": 20}, "nice=20: must be between 0 and 19"),
])
def test_a_malformed_message_names_the_field(change, message):
    data = {**WorkerSettings(model_id="m:1", artifact="m.fwa").to_json(), **change}
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_json(data)


def test_required_fields_must_be_present():
    with pytest.raises(SettingsError, match=r"lack \['artifact'\]"):
        WorkerSettings.from_json({"model_id": "m:1"})
