"""Both APIs refuse a request the same way, through service/requests.py."""

from __future__ import annotations

import pytest

from framewire.oip import grpc_service_pb2 as oip
from framewire.service import requests
from framewire.service.api import oip_tensors
from framewire.service.errors import InvalidInputError
from framewire.v1.options import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K


def encoded_request(count: int) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="encoded_images", datatype="BYTES", shape=[count])
    tensor.contents.bytes_contents.extend([b"not decoded here"] * count)
    return request


def test_too_many_images_on_the_inference_protocol_says_what_the_native_api_says():
    with pytest.raises(InvalidInputError) as info:
        oip_tensors.images_from_request(encoded_request(17), model="tiny", max_images=16, max_elements=1000)
    assert info.value.message == (
        "the batch holds 17 images; the limit is 16 per request (--max-images-per-request); split it")
    assert len(oip_tensors.images_from_request(encoded_request(16), model="tiny", max_images=16,
                                               max_elements=1000)) == 16


def test_unset_options_mean_the_one_table_of_defaults():
    params = requests.predict_params(top_k=0, score_threshold=None, max_detections=0)
    assert (params.top_k, params.score_threshold, params.max_detections) == (
        DEFAULT_TOP_K, DEFAULT_SCORE_THRESHOLD, DEFAULT_MAX_DETECTIONS)


def test_a_frame_deadline_counts_from_its_arrival():
    class NoDeadline:
        def time_remaining(self):
            return None

    assert requests.frame_deadline(NoDeadline(), arrived=100.0, max_age_ms=250) == 100.25
