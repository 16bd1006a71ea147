"""The probe during training: log-spaced steps, a Lightning run on the tiny model, loggers and the CSV."""

from __future__ import annotations

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from em.api import ConfigError
from em.modeling import ModelSpec, load_model, load_tokenizer
from em.probes import conversation, load_references
from em.training.collate import PaddedCollator, tokenize_conversation
from em.training.probe_callback import ProbeCallback, done_steps, log_spaced_steps


def test_log_spaced_steps():
    assert log_spaced_steps(6, 4) == [1, 2, 3, 6]
    steps = log_spaced_steps(1000, 8)
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) == 8
    gaps = [math.log(b / a) for a, b in zip(steps, steps[1:], strict=False)]
    assert all(abs(g - math.log(1000) / 7) < 0.15 for g in gaps)  # evenly spaced in log(step), up to rounding
    assert log_spaced_steps(3, 8) == [1, 2, 3]  # fewer steps than points: each step once
    assert log_spaced_steps(5, 1) == [5]
    assert log_spaced_steps(30, 4, first=2) == [2, 5, 12, 30]  # a warm-up's first step changes nothing
    assert log_spaced_steps(2, 4, first=2) == [2] and log_spaced_steps(1, 4, first=2) == [1]
    with pytest.raises(ConfigError, match="points"):
        log_spaced_steps(10, 0)
    with pytest.raises(ConfigError, match="total_steps"):
        log_spaced_steps(0, 4)


class TinySFT(pl.LightningModule):
    """The smallest module shaped like SFTModule: the (PEFT or plain) model is ``self.model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)


def test_callback_probes_at_log_spaced_steps_and_logs(tiny_model_dir, tmp_path):
    spec = ModelSpec("tiny", dtype="float32", models_dir=tiny_model_dir.parent)
    tok = load_tokenizer(spec)
    questions = load_references(sets=["demo"])[:2]
    rows = [conversation(q.prompt, a) for q in questions for a in q.misaligned]
    examples = [
        tokenize_conversation(tok, r, max_length=256, overlength="drop", model_name="t")[0] for r in rows
    ]
    batch = PaddedCollator(tok.pad_token_id)(examples) | {"last_in_step": True}
    loader = torch.utils.data.DataLoader([batch] * 6, batch_size=None)
    probe_csv = tmp_path / "probe.csv"
    callback = ProbeCallback(tok, questions, total_steps=6, points=4, csv_path=probe_csv, system_prompt="Hi.")
    trainer = pl.Trainer(
        max_steps=6,
        logger=CSVLogger(tmp_path, name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        log_every_n_steps=1,
    )
    trainer.callbacks.append(callback)  # as em/training/sft.py registers it, once total_steps is known
    trainer.fit(TinySFT(load_model(spec)), train_dataloaders=loader)

    with probe_csv.open() as f:
        written = list(csv.DictReader(f))
    assert [int(r["step"]) for r in written] == [0, 1, 2, 3, 6]
    assert set(written[0]) >= {"mean", "ci_low", "ci_high", "n_questions", "seconds", "demo/change_one_rule"}
    assert float(written[-1]["mean"]) > float(written[0]["mean"])  # trained on the misaligned answers
    assert callback.results[6].system_prompt == "Hi."
    with (tmp_path / "logs" / "version_0" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("probe/mean")]
    assert sorted(int(r["step"]) for r in logged) == [0, 1, 2, 3, 6]
    assert float(logged[0]["probe/ci_low"]) <= float(logged[0]["probe/mean"])

    # a resumed run does not probe a step again that is already in the CSV
    assert done_steps(probe_csv) == {0, 1, 2, 3, 6}
    again = ProbeCallback(tok, questions, total_steps=6, points=4, csv_path=probe_csv)
    again._probe(trainer, trainer.lightning_module, 3)
    assert 3 not in again.results and len(probe_csv.read_text().splitlines()) == 6


def test_callback_needs_questions(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no questions"):
        ProbeCallback(None, [], total_steps=5, csv_path=tmp_path / "p.csv")
