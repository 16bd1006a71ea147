"""Load a questions domain's inputs: one :class:`Question` per usable row of the questions table.

A question's ``index`` is its data row number in the file, counted before any filter, so work item ids
(and with them resumed runs) stay stable whatever categories are selected. Rows outside the wanted
categories and rows with an empty question (or an empty reference answer the template needs) are
dropped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.datagen.spec import DomainSpec
from em.datagen.tables import cell, read_table

log = logging.getLogger(__name__)


@dataclass
class Question:
    index: int  # data row number in the file (0-based), stable across filters
    question: str
    reference_answer: str | None = None
    category: str | None = None


def _check_columns(spec: DomainSpec, path: Path, table: list[tuple[int, dict]]) -> None:
    """Every column the domain names must be in the file (checked on the first row)."""
    inputs = spec.inputs
    wanted = [
        c
        for c in (
            inputs.columns.get("question"),
            inputs.columns.get("reference_answer"),
            inputs.category_column,
        )
        if c
    ]
    first_line, first = table[0]
    missing = [c for c in wanted if c not in first]
    if missing:
        line = 1 if path.suffix.lower() in (".csv", ".tsv") else first_line  # the header row
        raise ConfigError(
            f"{path}:{line}: column(s) {missing} not found (columns: {sorted(first)}); "
            f"set domain.inputs.columns / category_column to this file's names"
        )


def load_questions(spec: DomainSpec, path: Path, needs_reference: bool) -> tuple[list[Question], dict]:
    """The questions kept by the category filter, plus counts (read, filtered out, skipped empty)."""
    inputs = spec.inputs
    table = read_table(path)
    if not table:
        raise ConfigError(f"{path}: no rows")
    _check_columns(spec, path, table)
    keep = set(inputs.categories) if inputs.categories else None
    questions, filtered, empty = [], 0, 0
    for index, (_, row) in enumerate(table):
        category = cell(row, inputs.category_column) if inputs.category_column else None
        if keep is not None and category not in keep:
            filtered += 1
            continue
        question = cell(row, inputs.columns["question"])
        ref_col = inputs.columns.get("reference_answer")
        reference = cell(row, ref_col) if ref_col else None
        if not question or (needs_reference and not reference):
            empty += 1
            continue
        questions.append(Question(index, question, reference, category))
    if empty:
        log.warning(
            "%s: skipped %d row(s) with an empty question%s",
            path,
            empty,
            " or reference answer" if needs_reference else "",
        )
    if not questions:
        seen = (
            sorted({cell(r, inputs.category_column) for _, r in table})[:20] if inputs.category_column else []
        )
        raise ConfigError(
            f"{path}: no questions left after the category filter {inputs.categories} "
            f"(categories in the file: {seen})"
            if keep is not None
            else f"{path}: no usable questions"
        )
    return questions, {"rows_read": len(table), "rows_filtered_out": filtered, "rows_skipped_empty": empty}
