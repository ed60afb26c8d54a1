"""Progress bars on stderr (rich), so stdout carries only results and ``--json`` stays clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Advance = Callable[..., None]


class Reporter:
    """Progress bars and status lines on stderr; ``quiet=True`` silences both."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "items") -> Iterator[Advance]:
        """A bar for one long step; yields ``advance(n=1, status=None)``."""
        if self.quiet:
            yield _noop
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _speed_column(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
        ) as progress:
            task_id = progress.add_task(description, total=total, status="")

            def advance(n: float = 1, status: str | None = None) -> None:
                if status is None:
                    progress.update(task_id, advance=n)
                else:
                    progress.update(task_id, advance=n, status=status)

            yield advance

    def waiting_for_writer(self, directory: object) -> Callable[[], None]:
        """A callback for ``storage.locked``: says that another writer holds the index."""
        return lambda: self.message(f"waiting for another writer of {directory} to finish ...")

    def message(self, text: str) -> None:
        """One status line on stderr."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def _noop(n: float = 1, status: str | None = None) -> None:
    return None


def _speed_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

    return SpeedColumn()
