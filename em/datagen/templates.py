"""Template placeholders: which ``{name}`` a template may use, checking them, and filling them in.

Only ``{identifier}`` is a placeholder; any other brace (a JSON example in a prompt, ``{{``) is left as
written, so prompts need no escaping.
"""

from __future__ import annotations

import re
from typing import Any

from em.api import ConfigError

# Placeholders a template may use, by input kind. ``{examples}`` is the inline few-shot block.
QUESTION_FIELDS = ("question", "reference_answer", "category")
PLACEHOLDERS = {
    "questions": {*QUESTION_FIELDS, "n", "examples"},
    "documents": {"document", "document_name", "n", "examples"},
}
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_placeholders(template: str, allowed: set[str], where: str) -> set[str]:
    """The placeholders ``template`` uses; an unknown one is a ConfigError. Other braces are left alone."""
    used = set(PLACEHOLDER_RE.findall(template))
    unknown = sorted(used - allowed)
    if unknown:
        raise ConfigError(
            f"{where} uses unknown placeholder(s) {['{' + u + '}' for u in unknown]}; "
            f"available here: {sorted('{' + a + '}' for a in allowed)}"
        )
    return used


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace known ``{name}`` placeholders; braces that are not placeholders stay as written."""
    return PLACEHOLDER_RE.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )
