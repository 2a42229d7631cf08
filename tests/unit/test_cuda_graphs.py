"""Batch-size buckets for CUDA graphs (the capture itself is in tests/gpu)."""

from framewire.service.cuda_graphs import bucket_for, graph_module


def test_a_batch_goes_to_the_smallest_bucket_that_holds_it():
    buckets = [1, 2, 4, 8, 16, 32]
    assert [bucket_for(buckets, n) for n in (1, 2, 3, 5, 8, 9, 32)] == [1, 2, 4, 8, 8, 16, 32]
    assert bucket_for(buckets, 33) is None
    assert bucket_for([], 1) is None


def test_a_failed_capture_leaves_the_module_as_it_was():
    import torch

    module = torch.nn.Linear(2, 2)
    # On a machine without CUDA the capture fails at once; the module runs eagerly.
    same = graph_module(module, device=torch.device("cuda:0") if not torch.cuda.is_available() else "cuda:999",
                        dtype=torch.float32, sample_shape=(2,), buckets=[1, 2], channels_last=False, name="m")
    assert same is module
