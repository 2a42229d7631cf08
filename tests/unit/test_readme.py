"""The README's commands stay true: CI runs its test command, its CLI lines parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from framewire.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    joined = "\n".join(bash_blocks()).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


def test_the_readme_has_a_run_command_and_a_test_command():
    blocks = bash_blocks()
    assert "make serve" in blocks[0] and "pytest" in blocks[1]


@pytest.mark.parametrize("command", [c for c in commands() if c.startswith("framewire ")])
def test_every_framewire_command_in_the_readme_parses(command):
    words = shlex.split(command, comments=True)
    if words[-1] == "&":  # started in the background
        words = words[:-1]
    args = build_parser().parse_args(words[1:])
    assert callable(args.handler)


def test_every_picture_the_readme_shows_is_in_the_repository():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "docs/operator-page.png" in pictures
    for picture in pictures:
        data = (ROOT / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", picture
