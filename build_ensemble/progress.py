"""How the build reports progress: a silent default that the CLI replaces with banners and bars."""

from __future__ import annotations

from typing import Callable, Iterable


class Reporter:
    """Receives progress; the default is silent (the CLI prints)."""

    def stage(self, name: str) -> None:
        """A stage starts."""

    def stage_done(self, name: str, seconds: float) -> None:
        """A stage ended after ``seconds``."""

    def epoch(self, record: dict) -> None:
        """A training epoch ended."""

    def iterate(self, items: Iterable, desc: str, total: int | None = None) -> Iterable:
        """Wrap a long loop (the CLI shows a progress bar)."""
        return items

    def batches(self, total: int) -> Callable[[int], None] | None:
        """Per-batch progress of the next training epoch: a callable taking a batch count, or None."""
        return None
