"""Model outputs to answers: top-k classes, embeddings, boxes in original pixels."""

from __future__ import annotations

from framewire.results import ClassScore, Detection

from .domain import ImagePrediction, PredictParams
from .preprocess import Geometry


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else ""


def classification(logits, labels: list[str], params: list[PredictParams],
                   geometries: list[Geometry]) -> list[ImagePrediction]:
    """Softmax probabilities and the top-k classes of a batch's logits [B, K],
    in one vectorised pass (each image with its own k)."""
    import torch

    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    width = logits.shape[1]
    k_max = max(1, min(max(p.top_k for p in params), width))
    scores, indices = probs.topk(k_max, dim=1)
    picked_logits = logits.gather(1, indices)
    answers = []
    for row, (p, g) in enumerate(zip(params, geometries)):
        k = max(1, min(p.top_k, width))
        classes = [
            ClassScore(i, _label(labels, i), s, l)
            for i, s, l in zip(indices[row, :k].tolist(), scores[row, :k].tolist(), picked_logits[row, :k].tolist())
        ]
        pred = ImagePrediction(g.original_width, g.original_height, classes=classes)
        if p.return_raw:
            pred.raw["logits"] = logits[row].numpy()
        answers.append(pred)
    return answers


def embedding(vector, params: PredictParams, geometry: Geometry) -> ImagePrediction:
    values = vector.float()
    pred = ImagePrediction(geometry.original_width, geometry.original_height, embedding=values.tolist())
    if params.return_raw:
        pred.raw["embedding"] = values.numpy()
    return pred


def detection(output: dict, labels: list[str], params: PredictParams, geometry: Geometry) -> ImagePrediction:
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
        found.append(Detection(box, index, _label(labels, index), score))
    pred = ImagePrediction(geometry.original_width, geometry.original_height, detections=found)
    if params.return_raw:
        pred.raw = {"boxes": boxes.numpy(), "labels": label_ids.numpy(), "scores": scores.numpy()}
    return pred
