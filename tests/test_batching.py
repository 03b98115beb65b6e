"""Length-grouped batches and padding-free packing (lit_ft/batching.py)."""

from __future__ import annotations

import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lit_ft.batching import (
    LengthGroupedBatchSampler,
    PaddingFreeCollator,
    padding_fraction,
    supports_padding_free,
)


def lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 500) for _ in range(n)]


def test_grouped_batches_cover_every_example_once_and_cut_padding():
    lens = lengths()
    sampler = LengthGroupedBatchSampler(lens, batch_size=8, seed=1, mega_batch_factor=50)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(sampler) == 125  # 1000 / 8
    assert max(lens[i] for i in batches[0]) == max(lens)  # longest first: OOM at step 1
    rng = torch.Generator().manual_seed(0)
    random_batches = torch.randperm(1000, generator=rng).view(-1, 8).tolist()
    grouped, shuffled = padding_fraction(lens, batches), padding_fraction(lens, random_batches)
    assert grouped < 0.1 < 0.3 < shuffled  # measured: ~0.04 vs ~0.43


def test_order_is_a_function_of_seed_and_epoch_and_resumes():
    sampler = LengthGroupedBatchSampler(lengths(103), batch_size=8, seed=3, mega_batch_factor=4)
    epoch0, epoch0_again = list(sampler), list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 == epoch0_again != epoch1
    assert len(sampler) == len(epoch1) == 13  # mega-batches 32+32+32+7 -> 4+4+4+1 batches
    fresh = LengthGroupedBatchSampler(lengths(103), batch_size=8, seed=3, mega_batch_factor=4)
    fresh.resume(epoch=1, batches_done=5)
    assert list(fresh) == epoch1[5:]
    assert list(fresh) == epoch1  # resuming skips once; the next pass is the whole epoch
    dropping = LengthGroupedBatchSampler(
        lengths(103), batch_size=8, seed=3, mega_batch_factor=4, drop_last=True
    )
    assert len(dropping) == len(list(dropping)) == 12
    assert all(len(b) == 8 for b in dropping)


def test_padding_free_collator_packs_one_row_with_restarting_positions():
    batch = PaddingFreeCollator()(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert "attention_mask" not in batch and batch["use_cache"] is False


def test_packed_gpt2_matches_separate_examples_and_padded_loss():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100)
    model = GPT2LMHeadModel(config).eval()  # sdpa: block-diagonal mask from position_ids
    assert supports_padding_free(model)
    examples = [{"input_ids": torch.randint(0, 100, (n,)).tolist()} for n in (7, 12, 3)]
    packed = PaddingFreeCollator()(examples)
    with torch.no_grad():
        out = model(**packed)
        start = 0
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            assert torch.allclose(out.logits[0, start : start + len(ids[0])], alone, atol=1e-5)
            start += ids.shape[1]
        # The same targets as padded batches: loss equals the token-weighted padded loss.
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.zeros((3, longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(examples):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[row, : len(e["input_ids"])] = 1
        padded = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert torch.allclose(out.loss, padded.loss, atol=1e-5)


def test_a_model_without_position_ids_is_not_packable():
    class NoPositions(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    assert not supports_padding_free(NoPositions())
