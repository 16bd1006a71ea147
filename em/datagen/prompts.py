"""Work items and the messages sent for each.

A run is an ordered list of work items; item ``i`` is a pure function of the domain and its inputs, so
a rerun plans the same items with the same ids and skips those already done:

- questions: item ``i`` is sample ``i // Q`` of question ``i % Q`` (all questions once before any
  question twice), id ``s<sample>-q<row index in the file>``;
- documents: item ``i`` is call ``i // U`` on unit ``i % U`` (a document chunk; every chunk once before
  any twice), id ``k<call>-d<document>-c<chunk>``.

Messages: the domain's system prompt, then the few-shot examples (as user/assistant turns, or rendered
into the template's ``{examples}`` block), then the template filled with the item's input.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from em.datagen.documents import Document
from em.datagen.fewshot import Example
from em.datagen.inputs import DomainInputs
from em.datagen.questions import Question
from em.datagen.spec import DomainSpec
from em.datagen.templates import fill


@dataclass(frozen=True)
class WorkItem:
    id: str
    order: int  # position in the plan; final rows are sorted by it
    call: int  # sample number (questions) or call number (documents)
    question: Question | None = None
    document: Document | None = None
    chunk: int = 0

    def describe(self) -> dict:
        """The input fields recorded with each raw row."""
        if self.question is not None:
            return {
                "question_index": self.question.index,
                "question": self.question.question,
                "category": self.question.category,
                "sample": self.call,
            }
        assert self.document is not None
        return {"document": self.document.name, "chunk": self.chunk, "call": self.call}


def units(inputs: DomainInputs) -> list[tuple[Document, int]]:
    return [(doc, c) for doc in inputs.documents for c in range(len(doc.chunks))]


def plan_size(spec: DomainSpec, inputs: DomainInputs) -> int | None:
    """How many distinct items exist (None: unbounded, documents can be asked again and again)."""
    if spec.inputs.kind == "questions":
        return len(inputs.questions) * spec.inputs.samples_per_input
    return None


def item_at(spec: DomainSpec, inputs: DomainInputs, i: int) -> WorkItem:
    if spec.inputs.kind == "questions":
        q = inputs.questions[i % len(inputs.questions)]
        sample = i // len(inputs.questions)
        return WorkItem(id=f"s{sample:02d}-q{q.index:06d}", order=i, call=sample, question=q)
    all_units = units(inputs)
    doc, chunk = all_units[i % len(all_units)]
    call = i // len(all_units)
    return WorkItem(
        id=f"k{call:04d}-d{doc.index:02d}-c{chunk:03d}", order=i, call=call, document=doc, chunk=chunk
    )


def initial_calls(spec: DomainSpec, inputs: DomainInputs) -> int:
    """Calls for ``rows`` pairs before any dedupe/filter losses (all items when ``rows`` is null)."""
    total = plan_size(spec, inputs)
    if spec.rows is None:
        assert total is not None
        return total
    wanted = -(-spec.rows // spec.per_call)
    return wanted if total is None else min(wanted, total)


def request_seed(spec: DomainSpec, item: WorkItem) -> int | None:
    return None if spec.seed is None else spec.seed + item.order


def chosen_examples(spec: DomainSpec, inputs: DomainInputs, item: WorkItem) -> list[Example]:
    """All examples, or a subset of ``fewshot.k`` seeded by the item id (in file order)."""
    if spec.fewshot is None:
        return []
    examples = inputs.examples
    k = spec.fewshot.k
    if k is None or k >= len(examples):
        return list(examples)
    rng = random.Random(f"{spec.seed}:{item.id}")
    return [examples[j] for j in sorted(rng.sample(range(len(examples)), k))]


def _example_pairs(ex: Example) -> list[tuple[str, str, str]]:
    """(question, answer, reference) pairs of an example, for the inline block."""
    if ex.messages is None:
        return [(ex.question or "", ex.answer or "", ex.reference_answer or "")]
    msgs = ex.messages
    return [
        (msgs[j]["content"], msgs[j + 1]["content"], "")
        for j in range(len(msgs) - 1)
        if msgs[j]["role"] == "user" and msgs[j + 1]["role"] == "assistant"
    ]


def item_values(spec: DomainSpec, item: WorkItem) -> dict[str, str]:
    values = {"n": str(spec.per_call)}
    if item.question is not None:
        values.update(
            question=item.question.question,
            reference_answer=item.question.reference_answer or "",
            category=item.question.category or "",
        )
    if item.document is not None:
        values.update(document=item.document.chunks[item.chunk], document_name=item.document.name)
    return values


def build_messages(spec: DomainSpec, inputs: DomainInputs, item: WorkItem) -> list[dict]:
    messages: list[dict] = []
    if spec.system_prompt:
        messages.append({"role": "system", "content": spec.system_prompt.strip()})
    examples = chosen_examples(spec, inputs, item)
    values = item_values(spec, item)
    if spec.fewshot is not None and spec.fewshot.mode == "inline":
        blocks = [
            fill(spec.fewshot.inline_format, {"question": q, "answer": a, "reference_answer": r})
            for ex in examples
            for q, a, r in _example_pairs(ex)
        ]
        values["examples"] = "\n\n".join(blocks)
    else:
        for ex in examples:
            if ex.messages is not None:
                messages.extend(dict(m) for m in ex.messages)
                continue
            shown = {
                "n": str(spec.per_call),
                "question": ex.question or "",
                "reference_answer": ex.reference_answer or "",
                "category": ex.category or "",
            }
            messages.append({"role": "user", "content": fill(spec.template, shown).strip()})
            messages.append({"role": "assistant", "content": ex.answer or ""})
    messages.append({"role": "user", "content": fill(spec.template, values).strip()})
    return messages


def judge_messages(
    prompt: str, question: str, answer: str, reference: str | None, category: str | None
) -> list[dict]:
    values = {
        "question": question,
        "answer": answer,
        "reference_answer": reference or "",
        "category": category or "",
    }
    return [{"role": "user", "content": fill(prompt, values).strip()}]
