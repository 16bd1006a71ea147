"""Routing of the fake OpenAI server: which part answers each ``/v1`` path (chat, models, files,
fine-tuning jobs, batches), and the state those parts keep.

Invariant: a route returns the answer's JSON object (or bytes, for file content) or raises an
:class:`~testing._fake_http.APIError`; it never touches the connection, so faults and replies stay the
request pipeline's (FakeOpenAIServer) concern.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testing._fake_batches import Batches
from testing._fake_chat import ChatHandler, chat_completion, default_chat_handler
from testing._fake_files import Store
from testing._fake_finetune import FineTuning
from testing._fake_http import APIError, json_object

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini")


class Routes:
    """The fake API's endpoints over one :class:`Store` (files, jobs and batches share its lock)."""

    def __init__(
        self,
        store: Store,
        take_line_fault: Callable[[], APIError | None],
        wait_latency: Callable[[], None],
    ):
        self.store = store
        self.fine_tuning = FineTuning(store)
        self.batches = Batches(store, self.complete, take_line_fault)
        self.chat_handler: ChatHandler = default_chat_handler
        self._wait_latency = wait_latency  # the server's latency_s, read at each chat request

    def route(self, method: str, path: str, query: dict, body: Any, upload: dict | None, moderated: bool):
        parts = path.strip("/").split("/")[1:]  # without "v1"
        head = parts[0] if parts else ""
        if method == "POST" and parts == ["chat", "completions"]:
            self._wait_latency()
            return self.complete(json_object(body))
        if method == "GET" and head == "models" and len(parts) <= 2:
            return self.models(parts[1] if len(parts) == 2 else None)
        if head == "files":
            return self.store.files_route(method, parts[1:], query, body, upload)
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self.fine_tuning.route(method, parts[2:], query, json_object(body, False), moderated)
        if head == "batches":
            return self.batches.route(method, parts[1:], query, json_object(body, False))
        raise APIError(404, f"Invalid URL ({method} {path})")

    def complete(self, body: dict) -> dict:
        return chat_completion(body, self.chat_handler, self.store.new_id("chatcmpl-"))

    def models(self, model_id: str | None):
        """The model list (or one model): the built-in ids plus every fine-tuned model produced so far."""
        with self.store.lock:
            tuned = [
                j["fine_tuned_model"] for j in self.fine_tuning.jobs.values() if j.get("fine_tuned_model")
            ]
        models = [
            {"id": m, "object": "model", "created": 0, "owned_by": "em-test"} for m in (*MODELS, *tuned)
        ]
        if model_id is None:
            return {"object": "list", "data": models}
        for model in models:
            if model["id"] == model_id:
                return model
        raise APIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
