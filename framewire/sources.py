"""Where the client tools' images come from: folders, globs, lists of paths,
and (for `framewire stream`) video files, URLs and cameras.

Nothing here imports torch; OpenCV is imported only for video sources.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

#: File name endings the server can decode (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
GLOB_CHARACTERS = frozenset("*?[")


class SourceError(ValueError):
    """A source names nothing usable; the message says what was wrong."""


def is_image_name(name: str | Path) -> bool:
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS


def list_folder(folder: str | Path) -> list[str]:
    """Every image file under `folder`, recursively, sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files if is_image_name(name))
    return sorted(found)


def discover_images(source: str | Path) -> list[str]:
    """The image paths a `framewire score` SOURCE names, without duplicates.

    A folder is searched recursively for JPEG, PNG, WebP and BMP files; a
    pattern with `*`, `?` or `[` is a glob (`**` crosses folders) keeping the
    image files it matches; an image file is itself; any other file is a list
    of paths, one per line (blank lines and lines starting with `#` are
    skipped, relative paths are relative to the current directory). Paths
    are returned as written: a resumed run must name the images the same way.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        paths = list_folder(text)
    elif path.is_file():
        paths = [text] if is_image_name(text) else _read_list(path)
    elif GLOB_CHARACTERS & set(text):
        paths = sorted(p for p in glob.glob(text, recursive=True) if is_image_name(p) and os.path.isfile(p))
        if not paths:
            raise SourceError(f"{text}: the pattern matches no JPEG, PNG, WebP or BMP file")
    else:
        raise SourceError(f"{text}: no such folder, file or glob pattern")
    return list(dict.fromkeys(paths))


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the list of paths: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Frame:
    """One frame from a stream source: `image` is what is sent (encoded bytes
    or an RGB array); `bgr` is the decoded picture for annotation (only when
    asked for)."""

    image: Any
    bgr: Any = None


def is_video_source(source: str) -> bool:
    """True when `source` needs OpenCV: a camera index, a URL or a file that is not a folder."""
    return source.isdigit() or "://" in source or not Path(source).is_dir()


def folder_frames(folder: str | Path, *, fps: float, decode: bool = False,
                  loop: bool = False) -> Iterator[Frame]:
    """The image files of a folder, in name order, as encoded frames played
    at `fps` (0: as fast as they are taken). `decode` also decodes each
    (with OpenCV) for annotation."""
    paths = list_folder(folder)
    if not paths:
        raise SourceError(f"{folder}: the folder holds no JPEG, PNG, WebP or BMP file")
    cv2 = require_opencv() if decode else None
    pacer = _Pacer(fps)
    while True:
        for path in paths:
            data = Path(path).read_bytes()
            bgr = None
            if cv2 is not None:
                import numpy as np

                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            pacer.wait()
            yield Frame(data, bgr)
        if not loop:
            return


def video_frames(source: str, *, fps: float | None, encode: str = "jpeg", jpeg_quality: int = 90,
                 keep_bgr: bool = False) -> Iterator[Frame]:
    """Frames from a video file, an RTSP/HTTP URL or a camera index, through OpenCV.

    A file is played at its own frame rate unless `fps` says otherwise (0: as
    fast as it decodes); live sources (URLs, cameras) set their own pace
    unless `fps` is given. Frames are sent as JPEG (`encode="jpeg"`) or raw
    RGB arrays (`encode="raw"`).
    """
    cv2 = require_opencv()
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SourceError(f"{source}: OpenCV cannot open it as a video file, stream URL or camera")
    live = source.isdigit() or "://" in source
    if fps is None:
        fps = 0.0 if live else (capture.get(cv2.CAP_PROP_FPS) or 0.0)
    pacer = _Pacer(fps)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            if encode == "jpeg":
                ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                if not ok:
                    raise SourceError(f"{source}: OpenCV could not encode a frame as JPEG")
                image = buffer.tobytes()
            else:
                image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            pacer.wait()
            yield Frame(image, bgr if keep_bgr else None)
    finally:
        capture.release()


def video_fps(source: str) -> float:
    """A video file's own frame rate (0 when unknown or live)."""
    if source.isdigit() or "://" in source:
        return 0.0
    cv2 = require_opencv()
    capture = cv2.VideoCapture(source)
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def require_opencv():
    """The cv2 module, or a SourceError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise SourceError(
            "video files, URLs, cameras and --annotate need OpenCV: pip install 'framewire[camera]' "
            "(a folder of frames does not)"
        ) from None
    return cv2


class _Pacer:
    """Sleeps so that successive calls come `1 / fps` seconds apart, from the first."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.start: float | None = None
        self.count = 0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.start is None:
            self.start = now
        delay = self.start + self.count * self.period - now
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period:  # fell behind: keep the pace from now on rather than burst
            self.start, self.count = now, 0
        self.count += 1
