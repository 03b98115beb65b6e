"""The peak memory a run should take, estimated before training (the pre-flight summary), so
the measured peak at the end (lit_ft/observe/memory.py) can be checked against it.

    peak = weights + gradients + AdamW states + activations + logits (+ what is held already)

A sum of the step's largest holdings, a little above the true peak: at the start of the
backward, when activations and logits peak, most gradients do not exist yet.

- weights: every parameter at its dtype (tied weights once), and those of a network held
  beside it (DPO's frozen reference);
- gradients: the trainable parameters at their dtype;
- AdamW: two fp32 moments per trainable parameter (8 bytes each);
- activations, for decoder transformers (what the backward keeps, per layer and token):
  31 x hidden x 4 bytes in fp32 (2 bytes under mixed precision), measured on GPT-2 with
  saved-tensor hooks: Korthikanti et al. 2022's 34 x hidden 2-byte values (with dropout
  masks) counted in fp32, plus the tanh-GELU's intermediates; plus the attention scores,
  3 x heads x tokens x 4 bytes, where attention materializes them (eager attention, or SDPA
  on a CPU, whose math kernel runs when dropout is on). With gradient checkpointing each
  layer keeps its input (2 x hidden x 4 bytes measured) and one layer's full set is rebuilt
  at a time;
- logits (for DPO, of its 2b rows: the policy's; the reference's exist at another time),
  the plain loss: tokens x vocab x 4 bytes (fp32, as the loss upcasts them) three
  times: the logits, the log-softmax saved for backward, and its gradient. GPT-2 at
  4 x 1,024 tokens: 4,096 x 50,257 x 4 x 3 = 2.5 GB. Chunked (lit_ft/model/chunked_loss.py):
  one chunk's logits and gradient, 2 x 512 x 50,257 x 4 = 206 MB, plus the head's weight
  gradient in fp32 and the hidden states' gradient;
- held already: on a CPU, the process's resident memory when the summary prints besides the
  weights (Python, libraries, the loaded data), since the measured peak RSS counts it; on a
  GPU nothing (the measured figure is tensors only).
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_ft.compat import attention_implementation
from lit_ft.model.chunked_loss import output_layer
from lit_ft.observe.memory import current_bytes, gigabytes, on_gpu


@dataclass
class MemoryEstimate:
    parts: dict[str, int]  # bytes, in the order printed
    checkpointing: str = ""  # whether gradient checkpointing is on, and why (results.json)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def text(self) -> str:
        shown = " + ".join(f"{name} {gigabytes(n)}" for name, n in self.parts.items() if n)
        return f"memory estimate: {gigabytes(self.total)} at peak = {shown}"


def estimate_memory(
    model,
    batch_size: int,
    seq_len: int,
    mixed_precision: bool,
    gradient_checkpointing: bool,
    chunk_tokens: int | None,
    vocab: int | None,
    held: list | None = None,
    shards: int = 1,
) -> MemoryEstimate:
    """The estimate for one micro-batch of `batch_size` x `seq_len` tokens; `chunk_tokens`
    None: the plain loss; `vocab` None: the task has no per-token logits (the head is small);
    `held`: networks kept beside the trained one (DPO's frozen reference: its weights only,
    as it runs without gradients); `shards`: trainer=fsdp2's process count, over which the
    weights, gradients and AdamW states are split (plus one whole block at a time)."""
    params = list(model.parameters())
    weights = held_now = sum(p.numel() * p.element_size() for p in params)  # unsharded yet
    trainable = [p for p in params if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    adamw = sum(p.numel() for p in trainable) * 8
    if shards > 1:  # 1/N of each, plus the largest unit gathered whole while it computes
        whole = _largest_block_bytes(model)
        weights, gradients, adamw = weights // shards + whole, gradients // shards, adamw // shards
    tokens = batch_size * seq_len
    parts = {
        "weights": weights,
        "reference": sum(p.numel() * p.element_size() for m in held or [] for p in m.parameters()),
        "gradients": gradients,
        "AdamW": adamw,
        "activations": activation_bytes(
            model.config, tokens, seq_len, mixed_precision, gradient_checkpointing
        ),
        "logits": logits_bytes(tokens, vocab, chunk_tokens, model),
    }
    if not on_gpu():
        parts["runtime and data"] = max(current_bytes() - held_now - parts["reference"], 0)
    return MemoryEstimate(parts)


def activation_bytes(config, tokens: int, seq_len: int, mixed: bool, checkpointing: bool) -> int:
    """What the backward keeps of a decoder transformer's layers (see the module's notes)."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads")
    if not (hidden and layers and heads):
        return 0
    size = 2 if mixed else 4
    per_layer = tokens * hidden * 31 * size
    eager = attention_implementation(config) == "eager"
    if eager or not on_gpu():  # the scores: 3 x heads x seq x 4 bytes per token
        per_layer += tokens * heads * seq_len * 3 * 4
    if checkpointing:  # every layer's input kept, one layer rebuilt at a time
        return layers * tokens * hidden * 2 * 4 + per_layer
    return layers * per_layer


def logits_bytes(tokens: int, vocab: int | None, chunk_tokens: int | None, model) -> int:
    if not vocab:
        return 0
    if chunk_tokens is None:  # logits, log-softmax, gradient: 3 x tokens x vocab x 4 bytes
        return 3 * tokens * vocab * 4
    head = output_layer(model)
    hidden = head.weight.shape[1] if head is not None else 0
    chunk = 2 * min(chunk_tokens, tokens) * vocab * 4  # one chunk's logits and gradient
    return chunk + vocab * hidden * 4 + tokens * hidden * 4  # + head and hidden gradients


def _largest_block_bytes(model) -> int:
    from lit_ft.model.strategy import block_classes

    blocks = tuple(block_classes(model))
    sizes = [
        sum(p.numel() * p.element_size() for p in m.parameters())
        for m in model.modules()
        if isinstance(m, blocks)
    ]
    return max(sizes, default=0)


def _first(config, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# `model.gradient_checkpointing=auto` turns it on when the estimate passes this share of the
# memory free for the run: the estimate is a sum of tensors, and what a process really takes
# runs 10-25% above it (the CPU allocator's free lists, temporaries; benchmarks/memory.py).
FIT_SHARE = 0.8


def free_bytes(on_cuda: bool, processes_here: int = 1) -> int | None:
    """Memory this run's process can take: the GPU's free memory, or on a CPU the host's
    available memory plus what the process already holds, split between the processes of
    this host (DDP/fsdp2 on CPUs share it); None where it cannot be read."""
    import torch

    if on_cuda:
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # no /proc (macOS)
        return None
    return (available + current_bytes()) // max(processes_here, 1)


def checkpointing_choice(
    setting, without: MemoryEstimate, with_it: MemoryEstimate, free: int | None
) -> tuple[bool, str]:
    """`model.gradient_checkpointing` resolved (auto | true | false), and why: auto turns it on
    only when the run would not fit without it (it costs ~30% more compute)."""
    if setting is not None and not isinstance(setting, str):
        return bool(setting), f"model.gradient_checkpointing={str(bool(setting)).lower()}"
    if free is None:
        return False, "auto: the free memory is unknown here, so off"
    room = f"{FIT_SHARE:.0%} of the {gigabytes(free)} free"
    if without.total <= FIT_SHARE * free:
        return False, f"auto: off, the estimated {gigabytes(without.total)} fits in {room}"
    why = f"auto: on, the estimated {gigabytes(without.total)} without it passes {room}"
    if with_it.total > FIT_SHARE * free:
        why += (
            f"; even with it {gigabytes(with_it.total)} may not fit: lower data.batch_size "
            "(raise trainer.accumulate_grad_batches to keep the step), data.block_size, or "
            "use peft=lora or trainer=fsdp2"
        )
    return True, why
