"""Markdown tables for notebooks and reports: one writer, so every table escapes and formats alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = fmt.format(value)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: Iterable[Sequence[Any]], columns: Sequence[str], fmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table: a header row, ``| --- |`` and one line per row.

    Args:
        rows: the rows, each with one value per column.
        columns: the header.
        fmt: format of float cells (other values go through ``str``; None is an empty cell).
            Pass strings for cells that need their own format (``f"{x:.1%}"``).

    Pipes and backslashes in cells are escaped and line breaks become spaces, so a cell never
    breaks the table. In a notebook: ``display(Markdown(markdown_table(rows, columns)))``.

    Raises:
        ValueError: no columns, or a row whose length differs from the header's.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    lines = ["| " + " | ".join(_cell(c, fmt) for c in columns) + " |",
             "|" + " --- |" * len(columns)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"markdown_table: row {i} has {len(row)} values for {len(columns)} "
                             f"columns ({', '.join(map(str, columns))}): {row!r:.80}")
        lines.append("| " + " | ".join(_cell(v, fmt) for v in row) + " |")
    return "\n".join(lines)
