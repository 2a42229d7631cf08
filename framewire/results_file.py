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
from typing import Iterable, Iterator

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ["path", "model", "version", "label", "score", "labels", "scores", "embedding", "detections", "error"]
CSV_HEADER = (",".join(CSV_COLUMNS) + "\n").encode()
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

    def open(self, *, drop_errors: bool = False) -> set[str]:
        """Read which images the file already holds (cutting off a row left
        incomplete by a crash) and open it for appending; returns their paths.
        `drop_errors` first removes the rows of failed images, so that they
        are scored again."""
        done, failed = self._read()
        if drop_errors and failed:
            self._rewrite_without(failed)
            done -= failed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="", **ENCODING)
        if self.format == "csv" and self._file.tell() == 0:
            self._file.write(",".join(CSV_COLUMNS) + "\n")
            self._sync(force=True)
        return done

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

    def _rows(self, f, complete: list[int]) -> Iterator[dict]:
        """The rows of an open file, up to its last newline; `complete[0]`
        counts the bytes they take."""
        lines = _complete_lines(f, complete)
        return _jsonl_rows(lines, self.path) if self.format == "jsonl" else _csv_rows(lines, self.path)

    def _read(self) -> tuple[set[str], set[str]]:
        """The paths in the file, and those of them whose row holds an error."""
        done: set[str] = set()
        failed: set[str] = set()
        complete = [0]
        try:
            with open(self.path, "rb") as f:
                for row in self._rows(f, complete):
                    done.add(row["path"])
                    if row.get("error"):
                        failed.add(row["path"])
                size = f.seek(0, os.SEEK_END)
        except FileNotFoundError:
            return done, failed
        except OSError as exc:
            raise ResultsFileError(f"{self.path}: cannot read the earlier results: {exc.strerror or exc}") from None
        if complete[0] < size:  # a row cut short by a crash: its image is scored again
            self._check_tail(complete[0])
            with open(self.path, "r+b") as f:
                f.truncate(complete[0])
                os.fsync(f.fileno())
        return done, failed

    def _check_tail(self, offset: int) -> None:
        """Refuse to cut off a tail that is not the start of one of our rows."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            tail = f.read(len(CSV_HEADER) + 1)
        start = CSV_HEADER if self.format == "csv" else b'{"path": '
        ours = offset > 0 or start.startswith(tail[:len(start)]) or not tail.strip(b"\0")
        if not ours:
            raise _not_ours(self.path, 1, f"it ends in {tail[:20]!r} without a newline")

    def _rewrite_without(self, paths: set[str]) -> None:
        """Replace the file, atomically, by one without the rows of `paths`."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, "rb") as source, open(temporary, "w", newline="", **ENCODING) as f:
            if self.format == "csv":
                f.write(",".join(CSV_COLUMNS) + "\n")
            for row in self._rows(source, [0]):
                if row["path"] not in paths:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n" if self.format == "jsonl"
                            else self._encode_csv_record(row))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @staticmethod
    def _encode_csv_record(row: dict) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([row[c] or "" for c in CSV_COLUMNS])
        return buffer.getvalue()


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


def _complete_lines(f, complete: list[int]) -> Iterator[str]:
    for line in f:
        if not line.endswith(b"\n"):
            return
        complete[0] += len(line)
        yield line.decode(**ENCODING)


def _jsonl_rows(lines: Iterable[str], path: Path) -> Iterator[dict]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise _not_ours(path, number, f"not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise _not_ours(path, number, "a row without a `path`")
        yield row


def _csv_rows(lines: Iterable[str], path: Path) -> Iterator[dict]:
    records = csv.reader(lines)
    header = next(records, None)
    if header is None:
        return
    if header != CSV_COLUMNS:
        raise _not_ours(path, 1, f"the header is {','.join(header)!r}, not {','.join(CSV_COLUMNS)!r}")
    for record in records:
        if not record:
            continue
        if len(record) != len(CSV_COLUMNS):
            raise _not_ours(path, records.line_num, f"{len(record)} fields instead of {len(CSV_COLUMNS)}")
        row = dict(zip(CSV_COLUMNS, record))
        row["error"] = row["error"] or None
        yield row
