"""ReadyBatches: which waiting batches a worker's compute thread merges."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from framewire.service.ready_batches import ReadyBatches


@dataclass(eq=False)
class Batch:
    merge_key: object
    rows: int
    max_rows: int = 0
    name: str = ""

    @property
    def group(self):
        return self.merge_key[0]


def names(batches) -> list[str]:
    return [b.name for b in batches]


def queued(*batches) -> ReadyBatches:
    ready = ReadyBatches()
    for batch in batches:
        ready.put(batch)
    return ready


A, B = ("a", (3, 32, 32)), ("b", (3, 32, 32))


def test_batches_of_one_model_merge_up_to_the_smallest_max_rows_and_others_keep_their_order():
    ready = queued(Batch(A, 3, 8, "a1"), Batch(B, 2, 8, "b1"), Batch(A, 4, 8, "a2"), Batch(B, 1, 8, "b2"),
                   Batch(A, 2, 8, "a3"), Batch(A, 1, 8, "a4"))
    assert names(ready.take()) == ["a1", "a2"]  # 3 + 4; a3 would make 9 > 8
    assert names(ready.take()) == ["b1", "b2"]
    assert names(ready.take()) == ["a3", "a4"]
    assert len(ready) == 0


def test_the_smallest_max_rows_among_the_merged_caps_the_merge():
    ready = queued(Batch(A, 2, 10, "a1"), Batch(A, 2, 5, "a2"), Batch(A, 2, 10, "a3"))
    assert names(ready.take()) == ["a1", "a2"]  # a3 would make 6 > 5
    assert names(ready.take()) == ["a3"]


def test_a_batch_that_does_not_fit_is_not_overtaken_by_a_later_one_of_its_model():
    ready = queued(Batch(A, 3, 4, "a1"), Batch(A, 4, 4, "a2"), Batch(A, 1, 4, "a3"))
    assert names(ready.take()) == ["a1"]
    assert names(ready.take()) == ["a2"]
    assert names(ready.take()) == ["a3"]


def test_a_batch_without_max_rows_runs_alone_and_is_never_taken_into_a_merge():
    ready = queued(Batch(A, 1, 0, "a1"), Batch(A, 1, 8, "a2"), Batch(A, 1, 0, "a3"), Batch(A, 1, 8, "a4"))
    assert names(ready.take()) == ["a1"]
    assert names(ready.take()) == ["a2"]  # a3 has no max_rows, and a4 must not overtake it
    assert names(ready.take()) == ["a3"]
    assert names(ready.take()) == ["a4"]


def test_take_waits_for_a_batch():
    ready = ReadyBatches()
    taken = []
    thread = threading.Thread(target=lambda: taken.append(ready.take()))
    thread.start()
    ready.put(Batch(A, 1, 4, "a1"))
    thread.join(10)
    assert not thread.is_alive() and names(taken[0]) == ["a1"]


def test_batches_whose_inputs_differ_in_shape_do_not_merge():
    other_shape = ("a", (3, 40, 40))
    ready = queued(Batch(A, 1, 8, "a1"), Batch(other_shape, 1, 8, "a2"), Batch(A, 1, 8, "a3"))
    assert names(ready.take()) == ["a1", "a3"]
    assert names(ready.take()) == ["a2"]


def test_a_pass_waits_for_expected_batches_of_its_model_that_are_still_being_prepared():
    """Batches that reached the worker but are still being prepared join the pass
    when they are put within the wait; batches of other models are not waited for."""
    ready = ReadyBatches()
    ready.expect("a")
    ready.put(Batch(A, 2, 8, "a1"))
    ready.expect("a")
    ready.expect("b")  # another model's batch: never waited for
    later = threading.Timer(0.05, lambda: ready.put(Batch(A, 3, 8, "a2")))
    later.start()
    assert names(ready.take(wait=5.0)) == ["a1", "a2"]
    later.join()


def test_the_wait_ends_at_once_when_nothing_of_the_model_is_being_prepared_or_the_pass_is_full():
    import time

    ready = ReadyBatches()
    ready.expect("a")
    ready.put(Batch(A, 2, 8, "a1"))
    began = time.monotonic()
    assert names(ready.take(wait=5.0)) == ["a1"]  # nothing expected: no wait
    ready.expect("a")
    ready.expect("a")
    ready.put(Batch(A, 8, 8, "full"))
    assert names(ready.take(wait=5.0)) == ["full"]  # full: no wait for the other
    assert time.monotonic() - began < 1.0


def test_a_batch_that_failed_in_preparation_ends_the_wait_for_it():
    ready = ReadyBatches()
    ready.expect("a")
    ready.put(Batch(A, 2, 8, "a1"))
    ready.expect("a")
    failed = threading.Timer(0.05, lambda: ready.settle("a"))
    failed.start()
    assert names(ready.take(wait=lambda group: 5.0 if group == "a" else 0.0)) == ["a1"]
    failed.join()


def test_the_wait_is_bounded():
    import time

    ready = ReadyBatches()
    ready.expect("a")
    ready.expect("a")
    ready.put(Batch(A, 2, 8, "a1"))
    began = time.monotonic()
    assert names(ready.take(wait=0.1)) == ["a1"]  # the other never comes
    assert 0.09 <= time.monotonic() - began < 2.0
