"""HTTP details of the fake OpenAI server: request bodies, multipart uploads, OpenAI-style errors."""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO


class APIError(Exception):
    """An error answered with the OpenAI error body ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.err_type = status, message, err_type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.code}
        }


def read_body(rfile: BinaryIO, headers) -> bytes:
    """The request body, by Content-Length or chunked transfer encoding (empty when neither)."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(rfile.read(size))
            rfile.readline()
    length = int(headers.get("Content-Length") or 0)
    return rfile.read(length) if length > 0 else b""


def _header_params(value: str) -> dict[str, str]:
    """``form-data; name="file"; filename="a.jsonl"`` -> ``{"name": "file", "filename": "a.jsonl"}``."""
    params = {}
    for match in re.finditer(r';\s*([\w*-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^;]*)', value):
        params[match.group(1).lower()] = (
            match.group(3) if match.group(3) is not None else match.group(2).strip()
        )
    return params


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict | None]:
    """Text fields of a multipart/form-data body, and its (first) file part as
    ``{"field", "filename", "content"}`` (``None`` when there is none)."""
    boundary = _header_params(content_type).get("boundary")
    if not boundary:
        raise APIError(400, "multipart/form-data request without a boundary")
    fields: dict[str, str] = {}
    upload = None
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n")
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise APIError(400, "malformed multipart/form-data part (no header/body separator)")
        data = data.removesuffix(b"\r\n")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = _header_params(headers.get("content-disposition", ""))
        name = disposition.get("name", "")
        if "filename" in disposition:
            if upload is None:
                upload = {"field": name, "filename": disposition["filename"], "content": data}
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, upload


def parse_body(raw: bytes, content_type: str) -> tuple[Any, dict | None]:
    """The request body as JSON, or as multipart fields (the file part summarised as name and size), and
    the uploaded file (``None`` for JSON bodies)."""
    if not raw:
        return None, None
    if content_type.startswith("multipart/form-data"):
        fields, upload = parse_multipart(raw, content_type)
        body: dict[str, Any] = dict(fields)
        if upload is not None:
            body[upload["field"]] = {"filename": upload["filename"], "bytes": len(upload["content"])}
        return body, upload
    try:
        return json.loads(raw), None
    except ValueError as exc:
        raise APIError(400, f"We could not parse the JSON body of your request: {exc}") from exc


def json_object(body: Any, required: bool = True) -> dict:
    """``body`` when it is a JSON object (``{}`` for a missing optional body), else a 400."""
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def page(items: list[dict], query: dict[str, str], default_limit: int = 20) -> dict:
    """A cursor page of ``items``: ``after`` = id of the last item already seen, ``limit`` = page size."""
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError as exc:
        raise APIError(400, f"limit must be an integer, got {query.get('limit')!r}", param="limit") from exc
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}
