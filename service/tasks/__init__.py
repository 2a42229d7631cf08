"""One handler per task, chosen by the artifact's task (see `base`).

    handler = task_handler(artifact)        # e.g. ClassificationTask
    register_task(SegmentationTask)         # a new task: one module plus this line

The registry refuses a second handler for a name; `task_names()` lists them.
"""

from __future__ import annotations

from .base import TaskHandler, TensorOutputTask, register_task, task_class, task_handler, task_names
from .classification import ClassificationTask
from .detection import DetectionTask
from .embedding import EmbeddingTask

register_task(TensorOutputTask)
register_task(ClassificationTask)
register_task(EmbeddingTask)
register_task(DetectionTask)

__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "EmbeddingTask",
    "TaskHandler",
    "TensorOutputTask",
    "register_task",
    "task_class",
    "task_handler",
    "task_names",
]
