"""service/heap.py: what start-up and loads freeze is out of the collector's
walks, and an unload's reference cycles are still freed."""

from __future__ import annotations

import gc
import weakref

import pytest

from framewire.service import heap


class Node:
    def __init__(self):
        self.other = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_is_alive_after_settling_is_frozen():
    node = Node()
    heap.settle()
    assert gc.get_freeze_count() > 0
    before = gc.get_freeze_count()
    later = [Node() for _ in range(100)]
    heap.keep()
    assert gc.get_freeze_count() >= before + len(later)
    del node, later


def test_an_unloaded_models_frozen_cycles_are_freed_by_the_next_settle():
    node = Node()
    alive = weakref.ref(node)
    heap.keep()  # loaded: frozen with everything else
    del node  # unloaded: garbage, but in a cycle the collector no longer walks
    gc.collect()
    assert alive() is not None
    heap.settle()
    assert alive() is None
