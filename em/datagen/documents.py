"""Load a documents domain's inputs: each source text file as a :class:`Document` of chunks.

A document longer than ``chunk_chars`` is split at paragraph breaks (blank lines), a paragraph longer
than that at spaces, so each chunk fits one generator call; chunks are the units work items cycle over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError


@dataclass
class Document:
    index: int
    name: str
    chunks: list[str]


def chunk_text(text: str, chunk_chars: int | None) -> list[str]:
    """Split at blank lines into chunks of at most ``chunk_chars`` (a longer paragraph is cut at spaces)."""
    text = text.strip()
    if not chunk_chars or len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for para in (p.strip() for p in text.split("\n\n")):
        while len(para) > chunk_chars:
            cut = para.rfind(" ", 0, chunk_chars)
            cut = cut if cut > 0 else chunk_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def load_document(index: int, path: Path, chunk_chars: int | None) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the document is empty")
    return Document(index=index, name=path.stem, chunks=chunk_text(text, chunk_chars))
