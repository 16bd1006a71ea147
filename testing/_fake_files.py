"""State shared by the fake server's endpoints (ids, the lock) and the Files API."""

from __future__ import annotations

import threading
import time
from typing import Any

from testing._fake_http import APIError, page

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class Store:
    """Ids, uploaded files and the lock guarding all of the server's state."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files: dict[str, dict] = {}  # id -> {"purpose", "filename", "bytes", "content", "created_at"}
        self._counter = 0

    def new_id(self, prefix: str) -> str:
        """Deterministic ids: ``<prefix>000001``, ``<prefix>000002``, ... (one counter for all kinds)."""
        with self.lock:
            self._counter += 1
            return f"{prefix}{self._counter:06d}"

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        """Store a file and return its ``file`` object."""
        file_id = self.new_id("file-")
        entry = {
            "purpose": purpose,
            "filename": filename,
            "bytes": len(content),
            "content": content,
            "created_at": int(time.time()),
        }
        with self.lock:
            self.files[file_id] = entry
        return self.file_object(file_id)

    def get_file(self, file_id: Any, param: str = "file_id", status: int = 404) -> dict:
        with self.lock:
            entry = self.files.get(file_id) if isinstance(file_id, str) else None
        if entry is None:
            where = "" if param == "file_id" else f" (for {param})"
            raise APIError(status, f"No such File object: {file_id}{where}", param=param)
        return entry

    def file_object(self, file_id: str) -> dict:
        entry = self.get_file(file_id)
        return {
            "id": file_id,
            "object": "file",
            "bytes": entry["bytes"],
            "created_at": entry["created_at"],
            "filename": entry["filename"],
            "purpose": entry["purpose"],
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def files_route(self, method: str, rest: list[str], query: dict, body: Any, upload: dict | None):
        """``/v1/files[/{id}[/content]]``; ``rest`` is the path after ``/v1/files``."""
        if method == "POST" and not rest:
            purpose = body.get("purpose") if isinstance(body, dict) else None
            if purpose not in FILE_PURPOSES:
                raise APIError(
                    400,
                    f"purpose must be one of {', '.join(FILE_PURPOSES)}, got {purpose!r}",
                    param="purpose",
                )
            if upload is None:
                raise APIError(400, "The multipart form must contain a 'file' part.", param="file")
            return self.add_file(upload["content"], upload["filename"], purpose)
        if method == "GET" and not rest:
            with self.lock:
                ids = list(self.files)
            items = [self.file_object(i) for i in reversed(ids)]
            if query.get("purpose"):
                items = [f for f in items if f["purpose"] == query["purpose"]]
            return page(items, query, default_limit=10000)
        if method == "GET" and len(rest) == 1:
            return self.file_object(rest[0])
        if method == "DELETE" and len(rest) == 1:
            self.get_file(rest[0])
            with self.lock:
                self.files.pop(rest[0], None)
            return {"id": rest[0], "object": "file", "deleted": True}
        if method == "GET" and rest[1:] == ["content"]:
            return bytes(self.get_file(rest[0])["content"])
        raise APIError(404, f"Invalid URL ({method} /v1/files/{'/'.join(rest)})")
