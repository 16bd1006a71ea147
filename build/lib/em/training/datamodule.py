"""Tokenised examples -> deterministic, resumable micro-batches for Lightning.

Each epoch's order is a function of ``(seed, epoch)`` only, so a resumed run sees exactly the micro-batches
the killed run would have seen: the loader reports how many micro-batches of the epoch were consumed (saved
in Lightning's checkpoint) and skips them on resume. Every micro-batch carries the number of label tokens of
its whole optimizer step (all accumulation micro-batches, all ranks), so the loss of a step is the mean over
every assistant token in it, however the examples fall into micro-batches (packed or padded).

Without packing, examples are grouped by length (sorted inside shuffled mega-batches) to keep padding low.
Several ranks (DDP) each take every ``world_size``-th micro-batch; the last few micro-batches that do not
fill all ranks are left out of that epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from em.training.collate import PackedCollator, PaddedCollator, TokenizedExample

MEGABATCH_FACTOR = 50  # length grouping sorts examples within runs of this many micro-batches


@dataclass
class MicroBatch:
    indices: list[int]
    step_label_tokens: int  # label tokens in this micro-batch's optimizer step, summed over all ranks
    last_in_step: bool  # the optimizer steps after this micro-batch


def plan_epoch(
    lengths: list[int],
    label_counts: list[int],
    *,
    batch_size: int,
    grad_accum: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    world_size: int = 1,
    rank: int = 0,
) -> list[MicroBatch]:
    """This rank's micro-batches for one epoch, in order."""
    order = list(range(len(lengths)))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    if group_by_length:
        size = batch_size * MEGABATCH_FACTOR
        order = [
            i
            for k in range(0, len(order), size)
            for i in sorted(order[k : k + size], key=lambda i: -lengths[i])
        ]
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if group_by_length:  # longest batches not always first inside a mega-batch
        random.Random(seed * 100_003 + epoch + 1).shuffle(batches)
    batches = batches[: len(batches) // world_size * world_size]
    per_step = grad_accum * world_size  # global micro-batches per optimizer step
    plan = []
    for start in range(0, len(batches), per_step):
        step = batches[start : start + per_step]
        step_tokens = sum(label_counts[i] for b in step for i in b)
        mine = step[rank::world_size]
        plan += [MicroBatch(b, step_tokens, k == len(mine) - 1) for k, b in enumerate(mine)]
    return plan


class MicroBatchSampler:
    """Yields :class:`MicroBatch` plans of one epoch per iteration.

    The epoch comes from ``current_epoch()`` (the trainer's) when given, else from :meth:`set_epoch`:
    Lightning calls ``set_epoch`` only on a batch sampler's inner ``sampler``, which this one has not.
    """

    def __init__(
        self,
        lengths: list[int],
        label_counts: list[int],
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        group_by_length: bool,
        world_size: int = 1,
        rank: int = 0,
        current_epoch: Callable[[], int] | None = None,
    ):
        self.lengths, self.label_counts = lengths, label_counts
        self.current_epoch = current_epoch
        self.kwargs = dict(
            batch_size=batch_size,
            grad_accum=grad_accum,
            seed=seed,
            group_by_length=group_by_length,
            world_size=world_size,
            rank=rank,
        )
        self.epoch = 0
        self._skip = (0, 0)  # (epoch, micro-batches to skip in it) after a resume
        self._len = len(self.plan())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        self.epoch, self._skip = epoch, (epoch, consumed)

    def plan(self) -> list[MicroBatch]:
        return plan_epoch(self.lengths, self.label_counts, epoch=self.epoch, **self.kwargs)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[MicroBatch]:
        if self.current_epoch is not None:  # runs at the first next(): after the trainer set the epoch
            self.epoch = self.current_epoch()
        plan = self.plan()
        skip_epoch, skip = self._skip
        self._skip = (0, 0)
        yield from plan[skip:] if skip_epoch == self.epoch else plan


class ExampleDataset(Dataset):
    """Examples by index; a whole :class:`MicroBatch` at once via ``__getitems__``."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]

    def __getitems__(self, batch: MicroBatch) -> tuple[list[TokenizedExample], MicroBatch]:
        return [self.examples[i] for i in batch.indices], batch


class StepCollator:
    """Collate the examples and attach the optimizer-step bookkeeping of their micro-batch."""

    def __init__(self, collate: Callable[[list[TokenizedExample]], dict]):
        self.collate = collate

    def __call__(self, item: tuple[list[TokenizedExample], MicroBatch]) -> dict:
        examples, plan = item
        return {
            **self.collate(examples),
            "step_label_tokens": plan.step_label_tokens,
            "last_in_step": plan.last_in_step,
        }


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state (epoch, micro-batches consumed) goes into Lightning's checkpoint."""

    def __init__(self, *args, consumed: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = consumed

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "consumed": int(self._consumed())}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.resume(int(state["epoch"]), int(state["consumed"]))


class SFTDataModule(pl.LightningDataModule):
    def __init__(
        self,
        examples: list[TokenizedExample],
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        packing: bool,
        pad_token_id: int,
        num_workers: int = 0,
    ):
        super().__init__()
        self.examples = examples
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.packing, self.pad_token_id, self.num_workers = packing, pad_token_id, num_workers

    def sampler(self, world_size: int = 1, rank: int = 0, current_epoch=None) -> MicroBatchSampler:
        return MicroBatchSampler(
            [ex.num_tokens for ex in self.examples],
            [ex.num_label_tokens for ex in self.examples],
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            seed=self.seed,
            group_by_length=not self.packing,
            world_size=world_size,
            rank=rank,
            current_epoch=current_epoch,
        )

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return math.ceil(len(self.sampler(world_size)) / self.grad_accum)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        collate = PackedCollator() if self.packing else PaddedCollator(self.pad_token_id)

        def consumed() -> int:  # micro-batches of the current epoch that went through training_step
            return trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return ResumableDataLoader(
            ExampleDataset(self.examples),
            batch_sampler=self.sampler(world_size, rank, current_epoch=lambda: trainer.current_epoch),
            collate_fn=StepCollator(collate),
            num_workers=self.num_workers,
            consumed=consumed,
        )
