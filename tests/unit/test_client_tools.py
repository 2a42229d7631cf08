"""The client tools' parts that need no server: sources, the results file, options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from framewire.results_file import ResultsFile, ResultsFileError, error_row
from framewire.score import failure_reason, parse_servers
from framewire.sources import SourceError, discover_images
from framewire.stream import CameraStream, percentiles


def test_the_tools_import_and_parse_without_torch():
    script = (
        "import sys\n"
        "import framewire.cli, framewire.score, framewire.stream, framewire.sources, framewire.results_file\n"
        "p = framewire.cli.build_parser()\n"
        "p.parse_args(['score', 'photos', '--model', 'm', '--server', 'a:1,b:2', '--out', 'r.csv'])\n"
        "p.parse_args(['stream', '0', '--model', 'm', '--drop', 'newest', '--max-age-ms', '200'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'cv2' not in sys.modules, 'OpenCV was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_folder_is_searched_recursively_for_image_names_in_any_case(tmp_path):
    for name in ("b.JPG", "a.png", "sub/c.WebP", "sub/deeper/d.bmp", "sub/e.jpeg", "notes.txt", "f.tif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.removeprefix(str(tmp_path) + "/") for p in discover_images(tmp_path)]
    assert found == ["a.png", "b.JPG", "sub/c.WebP", "sub/deeper/d.bmp", "sub/e.jpeg"]


def test_globs_lists_and_bad_sources(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    (tmp_path / "y.png").write_bytes(b"x")
    assert discover_images(tmp_path / "x.png") == [str(tmp_path / "x.png")]
    assert discover_images(str(tmp_path / "*.png")) == [str(tmp_path / "x.png"), str(tmp_path / "y.png")]
    listing = tmp_path / "list.txt"
    listing.write_text("  y.png \n# a comment\n\nx.png\ny.png\n")
    assert discover_images(listing) == ["y.png", "x.png"]
    with pytest.raises(SourceError, match="matches no JPEG"):
        discover_images(str(tmp_path / "*.jpg"))
    with pytest.raises(SourceError, match="no such folder"):
        discover_images(tmp_path / "missing")


def test_a_row_cut_short_by_a_crash_is_dropped_and_the_file_appended_to(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [error_row("a.jpg", "m", "boom"), {"path": "b.jpg", "model": "m", "version": 1, "error": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"path": "c.jpg", "mod')
    results = ResultsFile(path)
    assert set(results.open()) == {"a.jpg", "b.jpg"}
    results.write([{"path": "c.jpg", "model": "m", "version": 1, "error": None}])
    results.close()
    assert [json.loads(line)["path"] for line in path.read_text().splitlines()] == ["a.jpg", "b.jpg", "c.jpg"]

    again = ResultsFile(path)
    assert set(again.open(drop_errors=True)) == {"b.jpg", "c.jpg"}  # failed rows are scored again
    again.close()
    assert "a.jpg" not in path.read_text()


def test_csv_rows_round_trip_and_other_files_are_refused(tmp_path):
    path = tmp_path / "r.csv"
    import csv

    results = ResultsFile(path)
    assert results.format == "csv" and results.open() == set()
    results.write([{"path": "a,b.jpg", "model": "m", "version": 2, "labels": ["cat", 7], "scores": [0.5, 0.25],
                    "error": None}, error_row("new\nline.jpg", "m", "cannot read the file")])
    results.close()
    again = ResultsFile(path)
    assert again.open(drop_errors=True) == {"a,b.jpg"}
    again.close()
    with open(path, newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["path"], row["label"], row["score"], json.loads(row["labels"])) == ("a,b.jpg", "cat", "0.5", ["cat", 7])
    assert (row["version"], row["embedding"], row["error"]) == ("2", "", "")

    for name, text in (("notes.csv", "when,what\n"), ("notes.jsonl", "my notes, no newline")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ResultsFileError, match="does not look like a framewire score results file"):
            ResultsFile(tmp_path / name).open()
        assert (tmp_path / name).read_text() == text  # never cut or overwritten
    with pytest.raises(ResultsFileError, match="--format 'xml'"):
        ResultsFile(path, "xml")


def test_options_are_checked_with_the_bad_value_named():
    assert parse_servers("a:1, b:2,a:1") == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="no server given"):
        parse_servers(" , ")
    with pytest.raises(ValueError, match="drop='latest'"):
        CameraStream("localhost:1", model="m", drop="latest")
    with pytest.raises(ValueError, match="max_in_flight=0"):
        CameraStream("localhost:1", model="m", max_in_flight=0)


def test_failures_are_grouped_without_what_varies_per_image():
    a = failure_reason("INVALID_ARGUMENT: images[3]: image data (19 bytes, starting 6e6f) is not a readable file")
    b = failure_reason("INVALID_ARGUMENT: image data (4 bytes, starting 0000) is not a readable file")
    assert a == b == "INVALID_ARGUMENT: image data (...) is not a readable file"
    assert failure_reason("UNAVAILABLE: down (after 5 attempts, last on h:1)") == "UNAVAILABLE: down"


def test_percentiles():
    assert percentiles([]) == {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    assert percentiles(list(range(1, 101))) == {"p50_ms": 51, "p90_ms": 91, "p99_ms": 100}


def test_every_framewire_command_in_the_clients_guide_parses():
    import re
    import shlex
    from pathlib import Path

    from framewire.cli import build_parser

    guide = (Path(__file__).resolve().parents[2] / "docs" / "clients.md").read_text()
    lines = "\n".join(re.findall(r"```bash\n(.*?)```", guide, flags=re.S)).replace("\\\n", " ").splitlines()
    commands = [line.strip().rstrip("&").strip() for line in lines if line.strip().startswith("framewire ")]
    assert any(c.startswith("framewire score ") for c in commands)
    assert any(c.startswith("framewire stream ") for c in commands)
    for command in commands:
        args = build_parser().parse_args(shlex.split(command, comments=True)[1:])
        assert callable(args.handler), command


def _detection_prediction():
    from framewire.client import Prediction
    from framewire.v1.results import Detection

    return Prediction(model="det", version=3, device="cpu", width=64, height=48, detections=[
        Detection((4.0, 5.0, 30.25, 40.5), 1, "person", 0.91234567), Detection((1.0, 1.0, 9.0, 9.0), 7, "", 0.5)])


def test_detections_become_rows_with_boxes_in_pixels():
    from framewire.results_file import scored_row

    row = scored_row("a.jpg", _detection_prediction())
    assert row == {"path": "a.jpg", "model": "det", "version": 3, "error": None, "detections": [
        {"label": "person", "score": 0.9123457, "box": [4.0, 5.0, 30.25, 40.5]},
        {"label": 7, "score": 0.5, "box": [1.0, 1.0, 9.0, 9.0]}]}


def test_the_annotated_video_has_every_frame_and_draws_boxes(tmp_path):
    cv2 = pytest.importorskip("cv2")
    import grpc
    import numpy as np

    from framewire.annotate import VideoAnnotator
    from framewire.stream import FrameResult

    annotator = VideoAnnotator(tmp_path / "out.avi", fps=10)
    blank = np.zeros((48, 64, 3), np.uint8)
    for number, status in enumerate(["ok", "dropped", "ok"]):
        prediction = _detection_prediction() if status == "ok" else None
        annotator.write(blank, FrameResult("cam", number, status, grpc.StatusCode.OK, "", prediction, 1.0))
    annotator.close()
    capture = cv2.VideoCapture(str(tmp_path / "out.avi"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 3
    assert frames[0][5:41, 4].max() > 100  # the box's left edge is drawn
    assert frames[1][5:41, 4].max() > 100  # a dropped frame shows the previous answer
