"""Every model state has one name on each protocol, from one table."""

from __future__ import annotations

from framewire.service.api.states import STATE_NAMES, native_state, oip_state
from framewire.service.domain import ModelState
from framewire.v1 import inference_pb2 as pb


def test_every_state_has_a_name_on_each_protocol():
    assert set(STATE_NAMES) == set(ModelState)


def test_the_native_enum_names_each_state_by_its_own_word():
    for state in ModelState:
        assert pb.ModelState.Name(native_state(state)) == f"MODEL_STATE_{state.value}"


def test_the_inference_protocol_calls_a_draining_version_unloading():
    assert [oip_state(s) for s in ModelState] == ["LOADING", "READY", "UNAVAILABLE", "UNLOADING"]
