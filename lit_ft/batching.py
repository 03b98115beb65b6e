"""Batches for variable-length examples (instruction tuning): less padding, or none at all.

Two independent tools; both leave the loss unchanged (every real target token still counts
once) and only change how much compute is spent on padding.

1. `LengthGroupedBatchSampler` (any model, any attention): batches of similar lengths, so a
   batch pads to a length close to its own examples'. Each epoch's batches are a pure function
   of (seed, epoch) like lit_ft's ResumableRandomSampler, and `resume(epoch, batches_done)`
   skips what a checkpoint already trained. Pass it as `DataLoader(batch_sampler=...)`.

       e.g. lengths 20..500 at random, batch 8: a random batch pads to ~the max of 8 draws
       (~450 tokens, ~45% padding); grouped within mega-batches of 8 x 50 it pads to ~5%.

2. `PaddingFreeCollator` (padding-free packing): a batch becomes ONE row holding every example
   back to back, with `position_ids` restarting at 0 at each example and no attention mask.
   Transformers then keeps the examples apart: `flash_attention_2` reads the boundaries from
   the position ids, and `sdpa`/`eager` build a block-diagonal causal mask from them
   (transformers' `find_packed_sequence_indices`). The first token of each example gets the
   label -100, so no example learns to predict its start from the previous example's end.
   The batch also carries `use_cache=False`: transformers only looks for packed examples when
   no KV cache is in play, and a causal LM builds one by default even in training.
   Only for models whose attention takes `position_ids` this way (`supports_padding_free`);
   GPT-2, Llama, Mistral, Qwen2 and most decoder-only models in transformers >= 4.53 do.

How the data module would use them (SFT: `examples` have `input_ids` and optionally `labels`
with -100 on the prompt):

    lengths = [len(ids) for ids in dataset["input_ids"]]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=seed)
    DataLoader(dataset, batch_sampler=sampler, collate_fn=pad_collator)     # (1)
    DataLoader(dataset, batch_size=8, sampler=..., collate_fn=PaddingFreeCollator())  # (2)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

IGNORE_INDEX = -100


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into mega-batches of `batch_size x mega_batch_factor`, sort each by length,
    cut into batches, shuffle the batches (the longest batch goes first, so an out-of-memory
    shows up at step 1 rather than hours in)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 42,
        mega_batch_factor: int = 50,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = max(1, mega_batch_factor)
        self.drop_last = drop_last
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self.epoch = epoch
        self._resume_at = (epoch, batches_done)

    def batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.mega_batch_factor
        batches = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            step = self.batch_size
            batches += [group[i : i + step] for i in range(0, len(group), step)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if not batches:
            return batches
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
        first = batches.pop(longest)
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [first, *(batches[i] for i in shuffled)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)  # fixed when the iterator is created
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            batches = batches[self._resume_at[1] :]
        self._resume_at = None
        return iter(batches)

    def __len__(self) -> int:
        # Batches never span mega-batches: each mega-batch of m examples gives ceil(m / batch).
        # e.g. 1,000 examples, batch 8 x factor 50 = 400: 400 + 400 + 200 -> 50 + 50 + 25 = 125
        mega = self.batch_size * self.mega_batch_factor
        n = len(self.lengths)
        sizes = [min(mega, n - start) for start in range(0, n, mega)]
        count = sum(-(-size // self.batch_size) for size in sizes)
        if self.drop_last and sizes and sizes[-1] % self.batch_size:
            count -= 1
        return count


class PaddingFreeCollator:
    """Pack a list of examples into one row: input_ids, position_ids and labels of shape
    (1, total tokens); no attention_mask, no padding; `use_cache=False` for the forward."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, positions, labels = [], [], []
        for example in examples:
            row = list(example["input_ids"])
            if not row:
                continue
            own = list(example["labels"]) if example.get("labels") is not None else list(row)
            ids += row
            positions += range(len(row))
            labels += [IGNORE_INDEX, *own[1:]]  # never predict an example from the one before
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "use_cache": False,
        }


def supports_padding_free(model) -> bool:
    """Whether `model`'s attention keeps packed examples apart given only position_ids.

    Checked, not assumed: one packed forward of two short examples must give the same logits
    as the two examples run separately (tiny inputs, done once before training).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        a = torch.arange(1, 6, device=device) % vocab
        b = torch.arange(7, 11, device=device) % vocab
        batch = PaddingFreeCollator()([{"input_ids": a.tolist()}, {"input_ids": b.tolist()}])
        with torch.no_grad():
            packed = model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                use_cache=False,
            ).logits[0]
            alone = model(input_ids=b[None]).logits[0]
        return torch.allclose(packed[len(a) :], alone, atol=1e-4, rtol=1e-3)
    except Exception:  # an architecture that rejects position_ids: not supported
        return False
    finally:
        model.train(was_training)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the tokens in padded batches that are padding: what grouping saves."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded if padded else 0.0
