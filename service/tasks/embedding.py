"""Embedding: one vector per image."""

from __future__ import annotations

import numpy as np

from ..domain import ImagePrediction
from ..api.oip_tensors import OutputTensor
from .base import TensorOutputTask


class EmbeddingTask(TensorOutputTask):
    """Output rows [B, D] as embedding vectors; `embedding` with return_raw."""

    name = "embedding"
    output_name = "embedding"

    def answer(self, output, geometries, params):
        answers = []
        for row, p, g in zip(output, params, geometries):
            values = row.float()
            pred = ImagePrediction(g.original_width, g.original_height, embedding=values.tolist())
            if p.return_raw:
                pred.raw["embedding"] = values.numpy()
            answers.append(pred)
        return answers

    def fill_prediction(self, prediction, message):
        message.embedding.values.extend(prediction.embedding)

    def oip_outputs(self):
        return [("embedding", "FP32", [self._declared_width("embedding", "logits")])]

    def oip_output(self, name, predictions, class_count):
        data = np.array([p.embedding for p in predictions], dtype="<f4")
        return OutputTensor(name, "FP32", list(data.shape), data.tobytes())
