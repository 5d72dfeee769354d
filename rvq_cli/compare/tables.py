"""The one shape of every table a comparison reports, recipe or synthetic: a title, a header and
rows of cells, some of them marked. The CLI renders it as a rich table (a marked cell bold with a
star), compare.md as Markdown (a marked cell in bold)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Cell", "Table", "plain_table"]


@dataclass(frozen=True)
class Cell:
    text: str
    mark: bool = False  # best (summary table) or an interval that excludes zero (differences)


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    marks: str = ""  # what a marked cell means ("best"), shown after the title; "" for a table without marks

    def markdown(self) -> list[str]:
        lines = ["| " + " | ".join(self.header) + " |", "|---|" + "---|" * (len(self.header) - 1)]
        for row in self.rows:
            lines.append("| " + " | ".join(f"**{c.text}**" if c.mark else c.text for c in row) + " |")
        return lines


def plain_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """A table of unmarked cells from rows of text."""
    return Table(title, list(header), [[Cell(text) for text in row] for row in rows])
