"""An annotated copy of a stream: every frame, with the latest answer drawn on
it (top classes, or boxes for detection models). Needs OpenCV (the `camera`
extra)."""

from __future__ import annotations

from pathlib import Path

from framewire.sources import require_opencv

GREEN, AMBER, WHITE, BLACK = (80, 255, 80), (0, 190, 255), (255, 255, 255), (0, 0, 0)
#: How much of the frame under a text line the dark box hides (1: all of it).
BOX_OPACITY = 0.8
#: A text line's height as a share of the frame's height, and its floor in pixels.
LINE_SHARE, MIN_LINE_PIXELS = 0.05, 14


class VideoAnnotator:
    """Writes BGR frames to a video file (`.mp4`: mp4v, `.avi`: MJPG) with the
    frame's answer drawn on it; a frame without one (skipped, dropped,
    failed) shows the last answer, marked stale. Text sits on a dark box and
    scales with the frame, so it reads on any picture."""

    def __init__(self, path: str | Path, fps: float):
        self.cv2 = require_opencv()
        self.path = str(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.fourcc = self.cv2.VideoWriter_fourcc(*("MJPG" if self.path.lower().endswith(".avi") else "mp4v"))
        self.writer = None
        self.size: tuple[int, int] | None = None
        self.last = None
        self.frames = 0
        self.failed = False
        #: The boxes (x0, y0, x1, y1) the text of the last rendered frame sits on.
        self.text_boxes: list[tuple[int, int, int, int]] = []

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
        self.writer.write(self.render(bgr, result))
        self.frames += 1

    def render(self, bgr, result):
        """A copy of `bgr` with `result` (and the last answer, when this frame
        has none) drawn on it."""
        bgr = bgr.copy()
        if result.ok:
            self.last = result.prediction
        self.text_boxes = []
        self.scale = self._scale_for(bgr.shape[0])
        line = self._line_height()
        if self.last is not None:
            self._draw(bgr, self.last, GREEN if result.ok else AMBER, stale=not result.ok, line=line)
        self._text(bgr, f"#{result.frame_number} {result.status}", (4, bgr.shape[0] - line // 3), WHITE)
        return bgr

    def _scale_for(self, height: int) -> float:
        """The font scale whose line is LINE_SHARE of the frame (at least MIN_LINE_PIXELS)."""
        (_, text_height), baseline = self.cv2.getTextSize("Ag", self.cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
        wanted = max(MIN_LINE_PIXELS, height * LINE_SHARE)
        return wanted / (text_height + baseline)

    def _line_height(self) -> int:
        (_, text_height), baseline = self.cv2.getTextSize("Ag", self.cv2.FONT_HERSHEY_SIMPLEX, self.scale,
                                                          self._thickness())
        return text_height + baseline + max(2, int(round(4 * self.scale)))

    def _thickness(self) -> int:
        return max(1, int(round(2 * self.scale)))

    def _draw(self, bgr, prediction, colour, *, stale: bool, line: int) -> None:
        cv2 = self.cv2
        if prediction.detections is not None:
            for d in prediction.detections:
                x0, y0, x1, y1 = (int(round(v)) for v in d.box)
                cv2.rectangle(bgr, (x0, y0), (x1, y1), BLACK, self._thickness() + 2)
                cv2.rectangle(bgr, (x0, y0), (x1, y1), colour, self._thickness())
                self._text(bgr, f"{d.label or d.label_index} {d.score:.2f}", (x0 + 2, max(line, y0 - 4)), colour)
        elif prediction.classes:
            for row, c in enumerate(prediction.classes[:3]):
                self._text(bgr, f"{c.label or c.index} {c.score:.2f}", (4, line * (row + 1)), colour)
        if stale:
            (width, _), _ = cv2.getTextSize("stale", cv2.FONT_HERSHEY_SIMPLEX, self.scale, self._thickness())
            self._text(bgr, "stale", (max(0, bgr.shape[1] - width - 8), line), AMBER)

    def _text(self, bgr, text: str, origin: tuple[int, int], colour) -> None:
        """`text` at `origin` (its baseline's left end) on a dark box."""
        cv2 = self.cv2
        thickness = self._thickness()
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.scale, thickness)
        pad = max(2, int(round(3 * self.scale)))
        x0, y0 = max(0, origin[0] - pad), max(0, origin[1] - height - pad)
        x1, y1 = min(bgr.shape[1], origin[0] + width + pad), min(bgr.shape[0], origin[1] + baseline + pad)
        if x1 > x0 and y1 > y0:
            region = bgr[y0:y1, x0:x1]
            region[:] = (region * (1.0 - BOX_OPACITY)).astype(region.dtype)
            self.text_boxes.append((x0, y0, x1, y1))
        cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self.scale, colour, thickness, cv2.LINE_AA)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
