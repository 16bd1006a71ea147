"""Chat rows -> the tokenised examples one training run trains on (and measures its held-out loss on).

The invariant: every row a run sees (training, held-out, KL reference) is tokenised here, with the run's
``batch.max_length`` / ``batch.overlength`` and the model's ``system_prompt`` added exactly as evaluation
adds it, so the same row always gives the same example; an empty result is refused with the counts.
"""

from __future__ import annotations

import logging

from em.api import ConfigError
from em.training.collate import TokenizedExample, TokenizeStats, tokenize_rows

log = logging.getLogger(__name__)


def prepare_examples(
    settings, rows: list[dict], tokenizer, *, source: str = "data", progress: bool = True
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenise rows for ``settings`` (em.training.settings.SFTSettings); refuse an empty result with the
    counts that explain it. A model whose config names a ``system_prompt`` gets it on every row without a
    system message (em.modeling.with_system_prompt), so training and evaluation never differ there."""
    from em.modeling import with_system_prompt

    system_prompt = getattr(settings.model, "system_prompt", None)
    if system_prompt is not None:
        rows = [{**r, "messages": with_system_prompt(r["messages"], system_prompt)} for r in rows]
    b = settings.batch
    examples, stats = tokenize_rows(
        tokenizer,
        rows,
        max_length=b.max_length,
        overlength=b.overlength,
        model_name=settings.model.name_or_path,
        progress=progress,
    )
    log.info(
        "tokenised %d rows: kept %d (%d truncated to %d tokens), dropped %d over-long and %d without an "
        "assistant turn; %d tokens, %d of them trained",
        stats.rows,
        stats.kept,
        stats.truncated,
        b.max_length,
        stats.dropped_overlength,
        stats.dropped_no_assistant,
        stats.tokens,
        stats.label_tokens,
    )
    if not examples:
        raise ConfigError(
            f"{source}: no trainable rows left ({stats.rows} rows; {stats.dropped_overlength} "
            f"over batch.max_length={b.max_length} with batch.overlength={b.overlength}, "
            f"{stats.dropped_no_assistant} without an assistant turn)"
        )
    return examples, stats
