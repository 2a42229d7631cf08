"""What the CLI says when a new user trips: a closed pipe, a token name used
twice, `stream --fps 0` with dropping, and annotations on any picture."""

from __future__ import annotations

import os
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from framewire.cli import main as cli
from framewire.client import ClassScore, Prediction


def framewire(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("framewire"), *args], text=True, timeout=120, **kwargs)


def test_inspect_into_a_closed_pipe_exits_quietly(demo_artifact):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` has read what it wanted and gone
    try:
        done = framewire("inspect", "--json", str(demo_artifact), stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_a_token_name_already_in_the_file_is_refused(tmp_path, capsys):
    tokens = tmp_path / "tokens.toml"
    assert cli(["token", "--name", "cameras", "--scope", "infer", "--append", str(tokens)]) == 0
    before = tokens.read_text()
    assert cli(["token", "--name", "cameras", "--scope", "infer", "--append", str(tokens)]) == 2
    assert f"{tokens} already has a token named 'cameras'; pick another --name" in capsys.readouterr().err
    assert tokens.read_text() == before
    assert cli(["token", "--name", "ops", "--scope", "admin", "--append", str(tokens)]) == 0
    assert tokens.read_text().count("[[token]]") == 2
    tokens.write_text("[[token]\n")
    assert cli(["token", "--name", "x", "--scope", "infer", "--append", str(tokens)]) == 2
    assert "cannot take another entry: not valid TOML" in capsys.readouterr().err


@pytest.mark.parametrize("drop", ["oldest", "newest"])
def test_stream_fps_0_with_dropping_is_refused(tmp_path, capsys, drop):
    assert cli(["stream", str(tmp_path), "--model", "m", "--fps", "0", "--drop", drop]) == 2
    err = capsys.readouterr().err
    assert f"--fps 0 sends frames as fast as the server answers them; --drop {drop} would drop" in err


def frame_result(number: int, ok: bool = True):
    prediction = Prediction("m", 1, "cpu", 640, 480, classes=[ClassScore(281, "tabby", 0.91, 3.0),
                                                             ClassScore(282, "tiger cat", 0.05, 1.0)])
    return SimpleNamespace(ok=ok, prediction=prediction if ok else None, frame_number=number,
                           status="ok" if ok else "skipped")


def luminance(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299


@pytest.mark.parametrize("height", [48, 480, 1080])
@pytest.mark.parametrize("background", ["white", "black", "green", "noise"])
def test_annotation_text_stands_out_on_any_frame(tmp_path, height, background):
    pytest.importorskip("cv2")
    from framewire.annotate import LINE_SHARE, MIN_LINE_PIXELS, VideoAnnotator

    width = height * 4 // 3
    frame = {
        "white": np.full((height, width, 3), 255, np.uint8),
        "black": np.zeros((height, width, 3), np.uint8),
        "green": np.tile(np.array([80, 255, 80], np.uint8), (height, width, 1)),
        "noise": np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8),
    }[background]
    annotator = VideoAnnotator(tmp_path / "out.avi", 25)
    annotator.render(frame, frame_result(1))
    drawn = annotator.render(frame, frame_result(2, ok=False))  # the stale answer, marked so
    assert len(annotator.text_boxes) == 4  # two classes, "stale" and the status line
    for x0, y0, x1, y1 in annotator.text_boxes:
        box = luminance(drawn[y0:y1, x0:x1].astype(float))
        text, ground = np.percentile(box, 99), np.percentile(box, 50)
        assert text - ground > 100, (background, height, text, ground)  # bright text on a dark box
        assert ground < 60
        assert y1 - y0 >= min(MIN_LINE_PIXELS, height * LINE_SHARE)
    tallest = max(y1 - y0 for _, y0, _, y1 in annotator.text_boxes)
    assert tallest >= height * LINE_SHARE  # text grows with the frame
