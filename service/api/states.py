"""The one table of model-state names: how each repository state
(`ModelState`) is spelled on each protocol.

The status document, the metrics and log lines use the state's own word
(`ModelState.value`); the native API sends its enum, and the Open
Inference Protocol's RepositoryIndex its own words (a draining version is
"UNLOADING" there). A new state is one row here; tests/unit/test_api_states.py
holds every state to having one.
"""

from __future__ import annotations

from dataclasses import dataclass

from framewire.v1 import inference_pb2 as pb

from ..domain import ModelState


@dataclass(frozen=True)
class StateNames:
    """One state as each protocol names it."""

    native: int  # a framewire.v1.ModelState value
    oip: str  # RepositoryIndex's `state`


STATE_NAMES: dict[ModelState, StateNames] = {
    ModelState.LOADING: StateNames(pb.MODEL_STATE_LOADING, "LOADING"),
    ModelState.READY: StateNames(pb.MODEL_STATE_READY, "READY"),
    ModelState.UNAVAILABLE: StateNames(pb.MODEL_STATE_UNAVAILABLE, "UNAVAILABLE"),
    ModelState.DRAINING: StateNames(pb.MODEL_STATE_DRAINING, "UNLOADING"),
}


def native_state(state: ModelState) -> int:
    """The native API's ModelState value of `state`."""
    return STATE_NAMES[state].native


def oip_state(state: ModelState) -> str:
    """The Open Inference Protocol's word for `state`."""
    return STATE_NAMES[state].oip
