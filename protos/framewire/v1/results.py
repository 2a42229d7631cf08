"""Result records shared by the server and the client (plain Python, no torch).

The server's task handlers build them and the client hands them to its
caller; they live in the wire-contract package so that neither side imports
the other (see this package's docstring)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassScore:
    """One class of a classification: its index, label, probability and logit."""

    index: int
    label: str
    score: float
    logit: float


@dataclass(frozen=True)
class Detection:
    """One detected object: an (x_min, y_min, x_max, y_max) box in original
    image pixels, its label and its score."""

    box: tuple[float, float, float, float]
    label_index: int
    label: str
    score: float
