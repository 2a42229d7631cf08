"""Classification: softmax probabilities and the top k classes per image."""

from __future__ import annotations

import numpy as np

from framewire.v1.results import ClassScore

from ..domain import ImagePrediction
from ..api.oip_tensors import OutputTensor, encode_bytes_elements
from .base import TensorOutputTask

_SCORES = ("logits", "probabilities")


class ClassificationTask(TensorOutputTask):
    """Logits [B, K] to the top-k classes; `logits` with return_raw."""

    name = "classification"
    output_name = "logits"

    def answer(self, output, geometries, params):
        """Softmax and top-k of a batch's logits in one vectorised pass
        (each image with its own k)."""
        import torch

        logits = output.float()
        probs = torch.softmax(logits, dim=1)
        width = logits.shape[1]
        k_max = max(1, min(max(p.top_k for p in params), width))
        scores, indices = probs.topk(k_max, dim=1)
        picked_logits = logits.gather(1, indices)
        answers = []
        for row, (p, g) in enumerate(zip(params, geometries)):
            k = max(1, min(p.top_k, width))
            classes = [
                ClassScore(i, self.label(i), s, lg)
                for i, s, lg in zip(indices[row, :k].tolist(), scores[row, :k].tolist(),
                                    picked_logits[row, :k].tolist())
            ]
            pred = ImagePrediction(g.original_width, g.original_height, classes=classes)
            if p.return_raw:
                pred.raw["logits"] = logits[row].numpy()
            answers.append(pred)
        return answers

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else ""

    def fill_prediction(self, prediction, message):
        for c in prediction.classes:
            message.classification.classes.add(index=c.index, label=c.label, score=c.score, logit=c.logit)

    def oip_outputs(self):
        width = self._declared_width("logits")
        return [
            ("logits", "FP32", [width]),
            ("probabilities", "FP32", [width]),
            ("top_k_indices", "INT64", [-1]),
            ("top_k_scores", "FP32", [-1]),
            ("top_k_labels", "BYTES", [-1]),
        ]

    def oip_needs_raw(self, names):
        return any(name in _SCORES for name in names)

    def oip_class_count_ok(self, name):
        return name in _SCORES

    def oip_output(self, name, predictions, class_count):
        n = len(predictions)
        if name in _SCORES:
            logits = np.stack([p.raw["logits"] for p in predictions]).astype(np.float32)
            values = logits if name == "logits" else _softmax(logits)
            if class_count:
                return self._class_strings(name, values, class_count)
            return OutputTensor(name, "FP32", list(values.shape), values.tobytes())
        k = min(len(p.classes) for p in predictions)
        if name == "top_k_indices":
            data = np.array([[c.index for c in p.classes[:k]] for p in predictions], dtype="<i8")
            return OutputTensor(name, "INT64", [n, k], data.tobytes())
        if name == "top_k_scores":
            data = np.array([[c.score for c in p.classes[:k]] for p in predictions], dtype="<f4")
            return OutputTensor(name, "FP32", [n, k], data.tobytes())
        labels = [c.label.encode() for p in predictions for c in p.classes[:k]]
        return OutputTensor(name, "BYTES", [n, k], encode_bytes_elements(labels))

    def _class_strings(self, name: str, values: np.ndarray, k: int) -> OutputTensor:
        """The classification extension: the top k as "value:index:label" strings."""
        k = min(k, values.shape[1])
        order = np.argsort(-values, axis=1, kind="stable")[:, :k]
        strings = []
        for row, indices in enumerate(order):
            for index in indices.tolist():
                text = f"{values[row, index]:f}:{index}"
                if index < len(self.labels):
                    text += f":{self.labels[index]}"
                strings.append(text.encode())
        return OutputTensor(name, "BYTES", [values.shape[0], k], encode_bytes_elements(strings))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
