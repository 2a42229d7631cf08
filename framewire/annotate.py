"""An annotated copy of a stream: every frame, with the latest answer drawn on
it (top classes, or boxes for detection models). Needs OpenCV (the `camera`
extra)."""

from __future__ import annotations

from pathlib import Path

from framewire.sources import require_opencv

GREEN, AMBER, WHITE, BLACK = (60, 200, 60), (0, 170, 255), (255, 255, 255), (0, 0, 0)


class VideoAnnotator:
    """Writes BGR frames to a video file (`.mp4`: mp4v, `.avi`: MJPG) with the
    frame's answer drawn on it; a frame without one (skipped, dropped,
    failed) shows the last answer, marked stale."""

    def __init__(self, path: str | Path, fps: float):
        self.cv2 = require_opencv()
        self.path = str(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.fourcc = self.cv2.VideoWriter_fourcc(*("MJPG" if self.path.lower().endswith(".avi") else "mp4v"))
        self.writer = None
        self.size: tuple[int, int] | None = None
        self.last = None
        self.frames = 0
        self.scale = 0.6
        self.failed = False

    def write(self, bgr, result) -> None:
        """Draw `result` (a FrameResult) on the frame `bgr` and append it."""
        cv2 = self.cv2
        if bgr is None or self.failed:
            return
        if self.writer is None:
            self.size = (bgr.shape[1], bgr.shape[0])
            self.writer = cv2.VideoWriter(self.path, self.fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                self.failed = True
                raise OSError(f"{self.path}: OpenCV cannot write a video there")
        elif (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size)
        else:
            bgr = bgr.copy()
        fresh = result.ok
        if fresh:
            self.last = result.prediction
        self.scale = min(1.5, max(0.4, bgr.shape[0] / 480 * 0.9))
        line = int(28 * self.scale) + 2
        if self.last is not None:
            self._draw(bgr, self.last, GREEN if fresh else AMBER, stale=not fresh, line=line)
        self._text(bgr, f"#{result.frame_number} {result.status}", (4, bgr.shape[0] - line // 3), WHITE)
        self.writer.write(bgr)
        self.frames += 1

    def _draw(self, bgr, prediction, colour, *, stale: bool, line: int) -> None:
        cv2 = self.cv2
        if prediction.detections is not None:
            for d in prediction.detections:
                x0, y0, x1, y1 = (int(round(v)) for v in d.box)
                cv2.rectangle(bgr, (x0, y0), (x1, y1), colour, 2)
                self._text(bgr, f"{d.label or d.label_index} {d.score:.2f}", (x0 + 2, max(line, y0 - 4)), colour)
        elif prediction.classes:
            for row, c in enumerate(prediction.classes[:3]):
                self._text(bgr, f"{c.label or c.index} {c.score:.2f}", (4, line * (row + 1)), colour)
        if stale:
            self._text(bgr, "stale", (bgr.shape[1] - int(70 * self.scale), line), AMBER)

    def _text(self, bgr, text: str, origin: tuple[int, int], colour) -> None:
        cv2 = self.cv2
        thickness = max(1, int(round(2 * self.scale)))
        cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self.scale, BLACK, thickness + 1, cv2.LINE_AA)
        cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self.scale, colour, thickness, cv2.LINE_AA)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
