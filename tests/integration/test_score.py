"""`framewire score` against two real `framewire serve` processes: every image
exactly once, through a server dying, bad files and interrupted runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from framewire.score import ScoreError, score_images
from framewire.sources import discover_images
from support.images import encode, random_image
from support.server import ServerProcess
from support.waiting import wait_until

N_IMAGES = 300
SERVE_ARGS = ("--device", "cpu", "--poll-seconds", "0", "--max-batch-size", "16", "--max-queue-delay-us", "1000",
              "--drain-seconds", "2", "--instances-per-device", "1")


class Replicas:
    """Two server processes on the tiny model; `alive()` restarts any that died."""

    def __init__(self, repo):
        self.repo = repo
        self.servers: list[ServerProcess | None] = [None, None]

    def _start(self, _) -> ServerProcess:
        return ServerProcess("--repo", str(self.repo), *SERVE_ARGS)

    def alive(self) -> list[ServerProcess]:
        dead = [i for i, s in enumerate(self.servers) if s is None or s.proc.poll() is not None]
        for i in dead:
            if self.servers[i] is not None:
                self.servers[i].close()
        with ThreadPoolExecutor(2) as pool:
            for i, server in zip(dead, pool.map(self._start, dead)):
                self.servers[i] = server
        return list(self.servers)

    def close(self) -> None:
        for server in self.servers:
            if server is not None:
                server.close()


@pytest.fixture(scope="module")
def replicas(tiny_repo):
    pair = Replicas(tiny_repo)
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """300 small images in three subfolders, in four encodings and mixed-case names."""
    folder = tmp_path_factory.mktemp("score-images")
    kinds = [("jpg", "JPEG"), ("png", "PNG"), ("JPEG", "JPEG"), ("webp", "WEBP")]
    for i in range(N_IMAGES):
        sub = folder / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        ext, fmt = kinds[i % 4]
        (sub / f"img{i:03d}.{ext}").write_bytes(encode(random_image(i, 48, 64), fmt))
    (folder / "notes.txt").write_text("not an image, and not named like one\n")
    return folder


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _count_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def framewire(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("framewire"), *args], capture_output=True, text=True, timeout=timeout)


def test_bad_files_get_an_error_row_and_the_run_goes_on_in_csv(replicas, image_folder, tmp_path):
    a, b = replicas.alive()
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(discover_images(image_folder))[:20]
    for path in good:
        shutil.copy(path, folder / os.path.basename(path))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    truncated = encode(random_image(999, 48, 64), "PNG")
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (folder / "unreadable.jpg").symlink_to(folder / "missing.jpg")  # listed, but cannot be read
    if os.geteuid() != 0:  # root reads any file whatever its mode
        (folder / "no-permission.png").write_bytes(truncated)
        (folder / "no-permission.png").chmod(0)
    out = tmp_path / "results.csv"
    servers = f"{a.address},{b.address}"

    done = framewire("score", str(folder), "--model", "tiny", "--server", servers, "--out", str(out),
                     "--batch-size", "8", "--top-k", "3")

    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_name = {os.path.basename(r["path"]): r for r in rows}
    bad = {"corrupt.jpg", "truncated.png", "unreadable.jpg"} | ({"no-permission.png"} if os.geteuid() else set())
    assert len(rows) == len(by_name) == 20 + len(bad)
    for name in bad:
        assert by_name[name]["error"], name
        assert by_name[name]["label"] == "" and by_name[name]["version"] == ""
    assert "not a readable JPEG, PNG, WebP or BMP" in by_name["corrupt.jpg"]["error"]
    assert by_name["corrupt.jpg"]["error"].startswith("INVALID_ARGUMENT: ")
    assert "corrupt or truncated" in by_name["truncated.png"]["error"]
    assert by_name["unreadable.jpg"]["error"] == "cannot read the file: No such file or directory"
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 20
    for r in scored:
        labels, scores = json.loads(r["labels"]), json.loads(r["scores"])
        assert len(labels) == 3 and r["label"] == labels[0] and float(r["score"]) == scores[0]
        assert r["model"] == "tiny" and r["version"] == "1"
    assert f"scored 20, failed {len(bad)}" in done.stdout
    assert "cannot read the file: No such file or directory" in done.stdout  # failures grouped by reason

    again = framewire("score", str(folder), "--model", "tiny", "--server", servers, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"skipped {20 + len(bad)} already in the output" in again.stdout

    retried = framewire("score", str(folder), "--model", "tiny", "--server", servers, "--out", str(out),
                        "--retry-failed", "--json-summary")
    assert retried.returncode == 0, retried.stderr
    summary = json.loads(retried.stdout)
    assert (summary["skipped"], summary["scored"], summary["failed"]) == (20, 0, len(bad))
    with open(out, newline="", encoding="utf-8") as f:
        assert Counter(r["path"] for r in csv.DictReader(f)) == Counter(r["path"] for r in rows)


def test_an_interrupted_run_resumes_with_exactly_the_rest(replicas, image_folder, tmp_path):
    a, b = replicas.alive()
    paths = discover_images(image_folder)
    out = tmp_path / "results.jsonl"
    command = ["score", str(image_folder), "--model", "tiny", "--server", f"{a.address},{b.address}", "--out", str(out)]

    limited = framewire(*command, "--limit", "70")
    assert limited.returncode == 0, limited.stderr
    assert "scored 70, failed 0, skipped 0 already in the output, 230 left for a later run" in limited.stdout
    assert len(read_jsonl(out)) == 70

    # A run killed partway, one small batch at a time so there is time to kill it.
    process = subprocess.Popen([shutil.which("framewire"), *command, "--batch-size", "2", "--concurrency", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _count_lines(out) >= 120 or process.poll() is not None, 60,
               "the interrupted run to write 120 rows", interval=0.01)
    process.kill()
    assert process.wait(10) == -signal.SIGKILL, "the run ended before it could be interrupted"
    with open(out, encoding="utf-8") as f:  # the rows that were complete when it died
        interrupted = [json.loads(line) for line in f if line.endswith("\n")]
    assert 120 <= len(interrupted) < N_IMAGES
    assert len({r["path"] for r in interrupted}) == len(interrupted)

    # A crash in the middle of writing a row leaves half a line: that image is scored again.
    done = {r["path"] for r in interrupted}
    cut_short = next(p for p in paths if p not in done)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"path": cut_short, "model": "tiny", "version": 1})[:30])

    rest = framewire(*command, "--json-summary")
    assert rest.returncode == 0, rest.stderr
    summary = json.loads(rest.stdout)
    assert summary["skipped"] == len(interrupted)
    assert summary["scored"] == N_IMAGES - len(interrupted) and summary["failed"] == 0
    rows = read_jsonl(out)
    assert Counter(r["path"] for r in rows) == Counter(paths)
    assert rows[: len(interrupted)] == interrupted
    assert all(r["error"] is None for r in rows)


def test_sources_can_be_a_glob_or_a_list_of_paths(replicas, image_folder, tmp_path):
    a, _ = replicas.alive()
    pattern = str(image_folder / "part1" / "*.JPEG")
    from_glob = discover_images(pattern)
    assert from_glob and all(p.endswith(".JPEG") and "/part1/" in p for p in from_glob)
    listing = tmp_path / "list.txt"
    listing.write_text("# the first five\n\n" + "\n".join(from_glob[:5] + from_glob[:1]) + "\n")
    assert discover_images(listing) == from_glob[:5]  # comments, blanks and repeats left out

    out = tmp_path / "results.jsonl"
    done = framewire("score", str(listing), "--model", "tiny", "--server", a.address, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(r["path"] for r in read_jsonl(out)) == sorted(from_glob[:5])


def test_usage_errors_and_unknown_models_exit_non_zero(replicas, image_folder, tmp_path):
    a, _ = replicas.alive()
    missing = framewire("score", str(tmp_path / "nowhere"), "--model", "tiny", "--server", a.address,
                        "--out", str(tmp_path / "r.jsonl"))
    assert missing.returncode == 2 and "no such folder, file or glob pattern" in missing.stderr

    not_results = tmp_path / "notes.jsonl"
    not_results.write_text("these are my notes\n")
    clobber = framewire("score", str(image_folder), "--model", "tiny", "--server", a.address, "--out", str(not_results))
    assert clobber.returncode == 2 and "does not look like a framewire score results file" in clobber.stderr
    assert not_results.read_text() == "these are my notes\n"

    unknown = framewire("score", str(image_folder), "--model", "nope", "--server", a.address,
                        "--out", str(tmp_path / "r.jsonl"))
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "nope" in unknown.stderr
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""


def test_embedding_models_write_their_vectors(image_folder, tmp_path):
    from framewire.exporter.export import export_module
    from framewire.exporter.writer import Preprocess
    from support.artifacts import TinyNet
    from support.server import RunningServer

    repo = tmp_path / "repo"
    export_module(TinyNet.build(num_classes=16), name="embedder", version=1, repo=repo, task="embedding",
                  preprocess=Preprocess(resize_mode="exact", crop=(32, 32)))
    paths = discover_images(image_folder)[:10]
    with RunningServer(repo=str(repo), runner="thread", max_batch_size=8) as server:
        summary = score_images(paths, model="embedder", servers=server.address, out=tmp_path / "vectors.csv")
    assert (summary.scored, summary.failed) == (10, 0)
    with open(tmp_path / "vectors.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    for row in rows:
        assert len(json.loads(row["embedding"])) == 16
        assert (row["labels"], row["label"], row["detections"], row["error"]) == ("", "", "", "")


def test_a_server_not_up_yet_is_waited_for_and_one_without_the_model_is_left_out(tiny_repo, image_folder,
                                                                                 tmp_path):
    import socket
    import threading

    from support.artifacts import export_tiny
    from support.server import RunningServer

    other_repo = tmp_path / "other-repo"
    export_tiny(other_repo, "other", 1)
    with socket.socket() as probe:  # a free port for the server that comes up during the run
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late: list[ServerProcess] = []
    starter = threading.Thread(target=lambda: late.append(ServerProcess("--repo", str(tiny_repo), *SERVE_ARGS,
                                                                        port=port)))
    paths = discover_images(image_folder)[:20]
    with RunningServer(repo=str(other_repo), runner="thread") as without_model:
        starter.start()  # `framewire serve` takes seconds to start: the run begins with nobody on that port
        try:
            summary = score_images(paths, model="tiny", servers=[without_model.address, f"127.0.0.1:{port}"],
                                   out=tmp_path / "r.jsonl", wait_ready=180)
        finally:
            starter.join()
            for server in late:
                server.close()
    assert (summary.scored, summary.failed) == (20, 0)
    assert dict(summary.servers) == {f"127.0.0.1:{port}": 20}

    start = time.monotonic()
    with pytest.raises(ScoreError, match=f"no server can score with model 'tiny': 127.0.0.1:{port}: UNAVAILABLE"):
        score_images(paths, model="tiny", servers=f"127.0.0.1:{port}", out=tmp_path / "r2.jsonl", wait_ready=1)
    assert time.monotonic() - start < 30  # gave up once `wait_ready` was up


# Last of the tests that use the replicas: it kills one (a later user would start it again).
def test_a_server_killed_halfway_loses_no_image_and_scores_none_twice(replicas, image_folder, tmp_path):
    a, b = replicas.alive()
    paths = discover_images(image_folder)
    assert len(paths) == N_IMAGES
    out = tmp_path / "results.jsonl"
    killed_at = []

    def kill_a_halfway(summary):
        if not killed_at and summary.done >= N_IMAGES // 2:
            os.killpg(a.proc.pid, signal.SIGKILL)
            a.proc.wait(10)
            killed_at.append(summary.done)

    summary = score_images(paths, model="tiny", servers=[a.address, b.address], out=out, batch_size=5,
                           concurrency=4, on_batch=kill_a_halfway)

    assert killed_at and killed_at[0] < N_IMAGES
    rows = read_jsonl(out)
    assert Counter(r["path"] for r in rows) == Counter(paths)  # every image, each once
    assert all(r["error"] is None and r["model"] == "tiny" and r["version"] == 1 for r in rows)
    assert all(len(r["labels"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    counts = (summary.total, summary.scored, summary.failed, summary.skipped, summary.remaining)
    assert counts == (N_IMAGES, N_IMAGES, 0, 0, 0)
    assert summary.servers[a.address] > 0 and summary.servers[b.address] > 0
    assert sum(summary.servers.values()) == N_IMAGES
    assert summary.retries >= 1  # batches that met the dead server went to the other one
    assert not summary.errors and not summary.interrupted
    assert "scored 300, failed 0" in summary.render()

    again = score_images(paths, model="tiny", servers=[a.address, b.address], out=out)
    assert (again.skipped, again.scored, again.failed, again.remaining) == (N_IMAGES, 0, 0, 0)
    assert read_jsonl(out) == rows
