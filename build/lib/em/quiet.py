"""Lines from third-party libraries that a user of em cannot act on are dropped where they are emitted.

Invariant: every rule below names one library, one exact message and why it is noise for em; nothing is
silenced by category or by library alone, so a new warning (a deprecation in our own call, a real
fallback) still shows. Warnings caused by em's own calls are fixed in the call instead (for example
``activation_checkpointing_enable`` in ``em.training.module``), never filtered here.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger name, message prefix, why it is noise)
LOG_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "lightning.pytorch.utilities.rank_zero",
        "💡 Tip:",
        "advertisements for litlogger/litmodels, printed by every Trainer",
    ),
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        "an optional CPU kernel fetched from the HF hub; offline the built-in CPU kernel is used",
    ),
)

# (message regex, category, why it is noise): deprecations raised inside libraries, not by em's calls
WARNING_RULES: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "Lightning's pytree helper on current torch; fixed upstream, nothing for a user to change",
    ),
    (
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        "read by PEFT's PeftModel, never by em",
    ),
)

# Loggers whose INFO lines are one per HTTP request (about 64 per judge run); warnings still show.
CHATTY_LOGGERS = ("httpx", "httpcore")


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to drop
            return True
        return not message.startswith(self.prefixes)


def install() -> None:
    """Install the rules once per process (idempotent: import of ``em`` calls it)."""
    by_logger: dict[str, list[str]] = {}
    for name, prefix, _why in LOG_RULES:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(tuple(prefixes)))
    for pattern, category, _why in WARNING_RULES:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # W&B's own switch for its "Use W&B Weave" advertisement, shown whenever openai is imported
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
