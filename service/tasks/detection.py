"""Detection: boxes, labels and scores per image, boxes in original pixels."""

from __future__ import annotations

import numpy as np

from framewire.v1.results import Detection

from ..domain import ImagePrediction
from ..errors import InferenceError, InvalidInputError
from ..api.oip_tensors import OutputTensor, encode_bytes_elements
from ..preprocess import check_pixels
from .base import TaskHandler

#: Size of the images detection models are warmed up with (they take any size).
WARMUP_SIZE = 320


class DetectionTask(TaskHandler):
    """A list of images of any size in, a dict of boxes, labels and scores
    per image out (torchvision's detection convention)."""

    name = "detection"
    stacked = False

    def check_preprocessed(self, shape, max_pixels):
        channels, height, width = shape
        if channels != self.spec.channels:
            raise InvalidInputError(
                f"float tensor has {channels} channels; model {self.model_name} takes {self.spec.channels}"
            )
        check_pixels(height, width, max_pixels)

    def warmup_shape(self):
        return self.spec.channels, WARMUP_SIZE, WARMUP_SIZE

    def warmup_sizes(self, max_batch_size, on_cuda):
        return [1, min(2, max_batch_size)]

    def model_output(self, output, batch_size):
        if not isinstance(output, (list, tuple)) or len(output) != batch_size or not all(
                isinstance(d, dict) and {"boxes", "labels", "scores"} <= set(d) for d in output):
            raise InferenceError(
                f"model {self.model_name} returned {type(output).__name__} for a batch of {batch_size}; "
                "a detection model returns one dict of boxes, labels and scores per image"
            )
        return [{k: d[k].to("cpu") for k in ("boxes", "labels", "scores")} for d in output]

    @staticmethod
    def concat(parts):
        return [d for part in parts for d in part]

    @staticmethod
    def select(output, rows):
        return [output[i] for i in rows]

    def encode_output(self, output):
        import torch

        parts, counts = [], []
        for d in output:
            scores = d["scores"].float().contiguous().numpy()
            counts.append(len(scores))
            parts += [d["boxes"].float().contiguous().numpy().tobytes(),
                      d["labels"].to(dtype=torch.int64).contiguous().numpy().tobytes(), scores.tobytes()]
        return {"counts": counts}, b"".join(parts)

    def decode_output(self, header, payload):
        import torch

        out, offset = [], 0
        for n in header["counts"]:
            boxes = np.frombuffer(payload, np.float32, n * 4, offset).reshape(n, 4)
            offset += n * 16
            labels = np.frombuffer(payload, np.int64, n, offset)
            offset += n * 8
            scores = np.frombuffer(payload, np.float32, n, offset)
            offset += n * 4
            out.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores)})
        return out

    def answer(self, output, geometries, params):
        return [self._one(d, p, g) for d, p, g in zip(output, params, geometries)]

    def _one(self, output: dict, params, geometry) -> ImagePrediction:
        """Boxes above the score threshold, best first, in original pixel coordinates."""
        boxes = output["boxes"].float()
        scores = output["scores"].float()
        label_ids = output["labels"]
        order = scores.argsort(descending=True)
        found = []
        for i in order.tolist():
            score = float(scores[i])
            if score < params.score_threshold or len(found) >= params.max_detections:
                break
            box = geometry.to_original(tuple(float(v) for v in boxes[i].tolist()))
            index = int(label_ids[i])
            label = self.labels[index] if 0 <= index < len(self.labels) else ""
            found.append(Detection(box, index, label, score))
        pred = ImagePrediction(geometry.original_width, geometry.original_height, detections=found)
        if params.return_raw:
            pred.raw = {"boxes": boxes.numpy(), "labels": label_ids.numpy(), "scores": scores.numpy()}
        return pred

    def fill_prediction(self, prediction, message):
        message.detections.SetInParent()
        for d in prediction.detections:
            x1, y1, x2, y2 = d.box
            found = message.detections.detections.add(label_index=d.label_index, label=d.label, score=d.score)
            found.box.x_min, found.box.y_min, found.box.x_max, found.box.y_max = x1, y1, x2, y2

    def oip_outputs(self):
        return [
            ("boxes", "FP32", [-1, 4]),
            ("scores", "FP32", [-1]),
            ("labels", "INT64", [-1]),
            ("label_names", "BYTES", [-1]),
            ("counts", "INT32", []),
        ]

    def oip_output(self, name, predictions, class_count):
        """Padded to the most detections M of the batch; `counts` says how many are real."""
        n = len(predictions)
        counts = [len(p.detections) for p in predictions]
        m = max(counts) if counts else 0
        if name == "counts":
            return OutputTensor(name, "INT32", [n], np.array(counts, dtype="<i4").tobytes())
        if name == "label_names":
            values = [(p.detections[j].label.encode() if j < len(p.detections) else b"")
                      for p in predictions for j in range(m)]
            return OutputTensor(name, "BYTES", [n, m], encode_bytes_elements(values))
        if name == "boxes":
            data = np.zeros((n, m, 4), dtype="<f4")
            for i, p in enumerate(predictions):
                for j, d in enumerate(p.detections):
                    data[i, j] = d.box
            return OutputTensor(name, "FP32", [n, m, 4], data.tobytes())
        dtype, attr = ("<f4", "score") if name == "scores" else ("<i8", "label_index")
        data = np.zeros((n, m), dtype=dtype)
        for i, p in enumerate(predictions):
            for j, d in enumerate(p.detections):
                data[i, j] = getattr(d, attr)
        return OutputTensor(name, "FP32" if name == "scores" else "INT64", [n, m], data.tobytes())
