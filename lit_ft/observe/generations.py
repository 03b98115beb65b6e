"""Sample generations of a causal LM at every validation, so the logs show what it writes.

The prompts come from the first `num_prompts` validation rows: for instruction data the
row's prompt, up to the first token the loss trains on (so the model writes the answer);
for text blocks their first `prompt_tokens` tokens. Real data of the run's own, the same at
every validation, so the samples show the model changing. Decoding is greedy: it draws no
random numbers, so training (and an exact resume) is untouched. Samples go to
<run dir>/generations.jsonl, the console, and the TensorBoard / W&B logger when one is active.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lit_ft.log import say
from lit_ft.tasks.answers import fit_positions
from lit_ft.tasks.chat import end_of_turn


def prompt_of(row: dict, prompt_tokens: int) -> list[int]:
    """The prompt part of a validation row: everything before the first trained token when
    the row carries labels (instruction tuning), else the first `prompt_tokens` tokens."""
    if "input_ids" not in row and "chosen_input_ids" in row:  # a preference pair: its prompt
        row = {"input_ids": row["chosen_input_ids"], "labels": row["chosen_labels"]}
    labels = row.get("labels")
    if isinstance(labels, list) and labels:
        start = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        if 0 < start < len(labels):
            return row["input_ids"][:start]
    return row["input_ids"][:prompt_tokens]


class SampleGenerations(L.Callback):
    def __init__(
        self,
        output_dir: str,
        num_prompts: int = 3,
        prompt_tokens: int = 16,
        max_new_tokens: int = 32,
    ) -> None:
        self.path = Path(output_dir) / "generations.jsonl"
        self.num_prompts = num_prompts
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self._written_step: int | None = None  # the evaluation after fit repeats the last one

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.num_prompts:
            return
        if trainer.global_step == self._written_step:
            return
        model, datamodule = pl_module.model, trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        validation = (getattr(datamodule, "datasets", None) or {}).get("validation")
        if tokenizer is None or validation is None or not _is_causal_lm(model):
            return
        rows = [validation[i] for i in range(min(self.num_prompts, len(validation)))]
        own = getattr(pl_module.task, "sample_generations", None)  # e.g. chats with images
        if own is not None:
            samples = own(model, rows, self.max_new_tokens)
        else:
            prompts = [prompt_of(row, self.prompt_tokens) for row in rows]
            samples = [self._generate(model, tokenizer, ids) for ids in prompts]
        if trainer.is_global_zero:
            self._write(trainer, samples)

    @torch.no_grad()
    def _generate(self, model, tokenizer, prompt_ids: list[int]) -> dict[str, str]:
        prompt_ids, new_tokens = fit_positions(prompt_ids, self.max_new_tokens, model.config)
        input_ids = torch.tensor([prompt_ids], device=model.device)
        # a chat's answer ends at the template's end of turn ("<|im_end|>"), which may be no
        # token of its own: stop there, as the validation's scored answers do
        stop = end_of_turn(tokenizer) if getattr(tokenizer, "chat_template", None) else None
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **({"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}),
        )
        completion = tokenizer.decode(output[0, len(prompt_ids) :])
        if stop and stop in completion:
            completion = completion[: completion.index(stop) + len(stop)]
        return {"prompt": tokenizer.decode(prompt_ids), "completion": completion}

    def _write(self, trainer, samples: list[dict[str, str]]) -> None:
        step = self._written_step = trainer.global_step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")
        lines = [
            f"  {_image_of(sample)}{sample['prompt']!r} -> {sample['completion']!r}"
            for sample in samples
        ]
        say("\n".join([f"samples at step {step}:", *lines]))
        _to_loggers(trainer, samples, step)


def _image_of(sample: dict[str, str]) -> str:
    return f"[{sample['image']}] " if sample.get("image") else ""


def _is_causal_lm(model) -> bool:
    config = getattr(model, "config", None)
    # PeftModel forwards `can_generate`, so adapters are covered too.
    can_generate = getattr(model, "can_generate", lambda: False)()
    return config is not None and not config.is_encoder_decoder and can_generate


def _to_loggers(trainer, samples: list[dict[str, str]], step: int) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            text = "\n\n".join(f"**{s['prompt']}**{s['completion']}" for s in samples)
            logger.experiment.add_text("samples", text, global_step=step)
        elif isinstance(logger, WandbLogger):
            rows = [[step, s["prompt"], s["completion"]] for s in samples]
            logger.log_text("samples", columns=["step", "prompt", "completion"], data=rows)
