"""The output of `framewire score`: one row per image, JSON lines or CSV, resumable.

Rows are appended only for images that are done (scored, or failed with a
reason), a batch's rows in one write followed by a flush, so a crash of the
scoring process loses nothing already written; the file is fsynced at most
every `fsync_seconds` and when it is closed, so a crash of the machine loses
at most that tail. A row counts only once its line ends with a newline:
whatever follows the last newline (a row cut short by a crash) is cut off
when the file is opened again, and those images are scored again. Nothing
else is ever rewritten, so an image can be in the file at most once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Iterable

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ["path", "model", "version", "label", "score", "labels", "scores", "embedding", "detections", "error"]
ENCODING = dict(encoding="utf-8", errors="surrogateescape")  # any file name round-trips


class ResultsFileError(ValueError):
    """The output file cannot be used as asked; the message says why and what to do."""


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """`fmt` when given, else from the file name: `.csv` is CSV, anything else JSON lines."""
    if fmt:
        if fmt not in FORMATS:
            raise ResultsFileError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


def _short(value: float) -> float:
    """A float32 value with the digits it carries (keeps the file small)."""
    return float(f"{value:.7g}")


def prediction_fields(pred) -> dict:
    """A client Prediction as plain fields: top-k labels and scores, the
    embedding, or the detections (boxes in original image pixels)."""
    if pred.classes:
        return {
            "labels": [c.label if c.label else c.index for c in pred.classes],
            "scores": [_short(c.score) for c in pred.classes],
        }
    if pred.embedding is not None:
        return {"embedding": [_short(v) for v in pred.embedding]}
    if pred.detections is not None:
        return {"detections": [
            {"label": d.label if d.label else d.label_index, "score": _short(d.score),
             "box": [_short(v) for v in d.box]}
            for d in pred.detections
        ]}
    return {}


def scored_row(path: str, pred) -> dict:
    return {"path": path, "model": pred.model, "version": pred.version, **prediction_fields(pred), "error": None}


def error_row(path: str, model: str, error: str) -> dict:
    return {"path": path, "model": model, "version": None, "error": error}


class ResultsFile:
    """An append-only results file; `open()` reads what an earlier run wrote."""

    def __init__(self, path: str | Path, fmt: str | None = None, *, fsync_seconds: float = 1.0):
        self.path = Path(path)
        self.format = format_for(path, fmt)
        self.fsync_seconds = fsync_seconds
        self._file = None
        self._last_sync = 0.0

    def open(self, *, drop_errors: bool = False) -> dict[str, dict]:
        """Read the rows already in the file (cutting off a row left incomplete
        by a crash) and open it for appending. Returns the rows by path.
        `drop_errors` removes the rows of failed images first, so that they are
        scored again."""
        rows = self._read()
        if drop_errors and any(r.get("error") for r in rows.values()):
            rows = {p: r for p, r in rows.items() if not r.get("error")}
            self._rewrite(rows.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="", **ENCODING)
        if self.format == "csv" and self._file.tell() == 0:
            self._file.write(",".join(CSV_COLUMNS) + "\n")
            self._sync(force=True)
        return rows

    def write(self, rows: list[dict]) -> None:
        """Append complete rows in one write, then flush (fsync now and then)."""
        if rows:
            self._file.write(self._encode(rows))
            self._sync()

    def close(self) -> None:
        if self._file is not None:
            self._sync(force=True)
            self._file.close()
            self._file = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sync(self, force: bool = False) -> None:
        self._file.flush()
        now = time.monotonic()
        if force or now - self._last_sync >= self.fsync_seconds:
            os.fsync(self._file.fileno())
            self._last_sync = now

    def _encode(self, rows: Iterable[dict]) -> str:
        if self.format == "jsonl":
            return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow(_csv_cells(row))
        return buffer.getvalue()

    def _read(self) -> dict[str, dict]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ResultsFileError(f"{self.path}: cannot read the earlier results: {exc.strerror or exc}") from None
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a row cut short by a crash: its image is scored again
            with open(self.path, "r+b") as f:
                f.truncate(complete)
                os.fsync(f.fileno())
        text = data[:complete].decode(**ENCODING)
        rows = _parse_jsonl(text, self.path) if self.format == "jsonl" else _parse_csv(text, self.path)
        return {row["path"]: row for row in rows}

    def _rewrite(self, rows: Iterable[dict]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", newline="", **ENCODING) as f:
            if self.format == "csv":
                f.write(",".join(CSV_COLUMNS) + "\n")
            f.write(self._encode(rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _csv_cells(row: dict) -> list[str]:
    def cell(value) -> str:
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    labels, scores = row.get("labels"), row.get("scores")
    top = {"label": labels[0] if labels else None, "score": scores[0] if scores else None}
    return [cell(top[c] if c in top else row.get(c)) for c in CSV_COLUMNS]


def _not_ours(path: Path, line: int, why: str) -> ResultsFileError:
    return ResultsFileError(
        f"{path}, line {line}: {why}; this does not look like a framewire score results file. "
        "Choose another --out (or the --format it was written in)."
    )


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise _not_ours(path, number, f"not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise _not_ours(path, number, "a row without a `path`")
        rows.append(row)
    return rows


def _parse_csv(text: str, path: Path) -> list[dict]:
    if not text:
        return []
    records = csv.reader(io.StringIO(text, newline=""))
    header = next(records, None)
    if header != CSV_COLUMNS:
        raise _not_ours(path, 1, f"the header is {','.join(header or [])!r}, not {','.join(CSV_COLUMNS)!r}")
    rows = []
    for record in records:
        if not record:
            continue
        if len(record) != len(CSV_COLUMNS):
            raise _not_ours(path, records.line_num, f"{len(record)} fields instead of {len(CSV_COLUMNS)}")
        row = dict(zip(CSV_COLUMNS, record))
        row["error"] = row["error"] or None
        rows.append(row)
    return rows
