"""Chunked cross-entropy for causal LMs: the output projection and the loss computed a chunk of
tokens at a time, so the [batch, tokens, vocab] logits never exist during training.

Why: for a causal LM the logits are often the largest tensor of a step. GPT-2's 50,257-token
vocabulary at batch 4 x 1,024 tokens is 4 x 1,024 x 50,257 x 4 bytes = 823 MB in fp32 (the
loss upcasts them), and their gradient as much again: 1.65 GB, against ~500 MB of weights.

How: the model's base (everything before the output embedding) gives the last hidden states;
`LinearCrossEntropy` takes them with the output embedding's weight and the shifted labels and,
chunk by chunk, computes the logits, their log-sum-exp, the loss and right away the chunk's
gradients (softmax - one-hot, times the hidden states and the weight), as Liger's fused linear
cross-entropy does. Only the chunk's logits exist at a time (512 x 50,257 x 4 bytes = 103 MB),
plus the gradients of the hidden states and the weight (kept until backward, which only scales
them by the incoming gradient). Computing the gradients in the forward pass instead of
recomputing the logits in backward costs no extra matmul: 3 per chunk, as the plain path.

Covered: any `AutoModelForCausalLM` whose logits are exactly `lm_head(base(...)[0])`, with the
head a plain `nn.Linear` (GPT-2, Llama, Mistral, Qwen2/3, GPT-NeoX, Phi, OPT, ...). Checked,
not trusted: `chunked_loss_problem` refuses config-level logit soft-capping or scaling by name
(Gemma 2/3's final_logit_softcapping, Cohere's logit_scale, Granite's logits_scaling) and then
compares the path's logits with the model's own on a few tokens; any architecture that differs
(or a LoRA adapter on the head) falls back to the plain loss, saying why. LoRA elsewhere is
fine: peft's wrapper is looked through (`get_base_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_ft.problems import Problems

# Config attributes that change the logits after the head, by name: refused without a probe.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# `auto` turns chunking on when the logits of one micro-batch and their gradient, in fp32,
# would take more than this: tokens x vocab x (4 + 4) bytes. GPT-2 at 4 x 1,024 tokens:
# 4,096 x 50,257 x 8 = 1.65 GB (on); the bundled tiny GPT-2 at 16 x 128 tokens:
# 2,048 x 4,096 x 8 = 67 MB (off: that is less than one chunk of a large vocabulary would
# cost, and the whole matmul at once is the fastest way to a small loss).
AUTO_THRESHOLD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class LossChoice:
    """What the training loss of a causal task goes through, and why (pre-flight, results)."""

    chunked: bool
    chunk_tokens: int
    why: str

    def text(self) -> str:
        way = f"chunked, {self.chunk_tokens:,} tokens a chunk" if self.chunked else "plain"
        return f"training loss {way} ({self.why})"


def logits_bytes(tokens: int, vocab: int) -> int:
    """fp32 logits of a micro-batch and their gradient: tokens x vocab x 8 bytes."""
    return tokens * vocab * 8


def choose_loss(
    setting,
    model,
    tokens_per_batch: int,
    chunk_tokens: int,
    compiled: bool = False,
    liger: bool = False,
    fully_sharded: bool = False,
) -> LossChoice:
    """`model.chunked_loss` resolved for this model and micro-batch (auto | true | false).

    `compiled` (compile.enabled): the chunked path calls the model's base, which
    `nn.Module.compile()` of the whole model leaves uncompiled; auto keeps the plain path then.
    `liger` (model.liger_kernel): Liger's fused loss, inside the model's forward, takes over.
    `fully_sharded` (trainer=fsdp2): the head's weight is a shard outside the model's own
    forward, where FSDP2 gathers it, so the plain path (not yet chunked under FSDP2)."""
    if liger:
        return LossChoice(
            False, chunk_tokens, "model.liger_kernel=true: Liger's fused linear cross-entropy"
        )
    if fully_sharded:
        return LossChoice(
            False, chunk_tokens, "trainer=fsdp2: the head's weight is sharded outside forward"
        )
    if setting is False:
        return LossChoice(False, chunk_tokens, "model.chunked_loss=false")
    if compiled and setting == "auto":
        return LossChoice(
            False, chunk_tokens, "auto: compile.enabled=true compiles the plain path only"
        )
    vocab = output_layer(model).weight.shape[0] if output_layer(model) is not None else 0
    size = logits_bytes(tokens_per_batch, vocab)
    full = f"{tokens_per_batch:,} tokens x {vocab:,} vocab x 8 bytes = {size / 2**20:,.0f} MB"
    if setting == "auto" and size <= AUTO_THRESHOLD_BYTES:
        return LossChoice(
            False, chunk_tokens, f"auto: the logits and their gradient are {full}, <= 256 MB"
        )
    problem = chunked_loss_problem(model)
    if problem:
        return LossChoice(False, chunk_tokens, f"chunking unavailable: {problem}")
    how = "auto: " if setting == "auto" else "model.chunked_loss=true: "
    uncompiled = "; its layers run uncompiled (compile.enabled)" if compiled else ""
    return LossChoice(True, chunk_tokens, f"{how}the full logits would be {full}{uncompiled}")


# -- finding the pieces ---------------------------------------------------------------------------
def unwrapped(model):
    """The Hugging Face model itself, under a peft wrapper if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_layer(model):
    """The output embedding (the LM head), or None."""
    getter = getattr(unwrapped(model), "get_output_embeddings", None)
    return getter() if getter is not None else None


def base_of(model):
    """The module that gives the last hidden states: the model's `base_model` (e.g. GPT-2's
    `transformer`, Llama's `model`), when it is a proper part of the model."""
    inner = unwrapped(model)
    base = getattr(inner, "base_model", None)
    return base if isinstance(base, torch.nn.Module) and base is not inner else None


def chunked_loss_problem(model) -> str | None:
    """Why the chunked path cannot give this model's loss, or None when it can."""
    inner = unwrapped(model)
    name = type(inner).__name__
    head = output_layer(model)
    if base_of(model) is None or head is None:
        return f"{name} shows no base model and output embedding apart"
    if type(head) is not torch.nn.Linear:
        return f"{name}'s output embedding is a {type(head).__name__}, not a plain Linear"
    config = inner.config
    for key in LOGIT_TRANSFORMS:
        value = getattr(config, key, None)
        if value not in (None, 1, 1.0):
            return f"{name} transforms its logits ({key}={value})"
    if not _same_logits(model):
        return f"{name}'s logits are not its output embedding of the last hidden states"
    return None


def _same_logits(model) -> bool:
    """One tiny forward: the model's own logits equal the head applied to the base's output."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        vocab = output_layer(model).weight.shape[0]
        ids = (torch.arange(1, 9, device=parameter.device) % vocab)[None]
        with torch.no_grad():
            expected = model(input_ids=ids, use_cache=False).logits
            hidden = base_of(model)(input_ids=ids, use_cache=False)[0]
            got = output_layer(model)(hidden)
        tolerance = 1e-4 if parameter.dtype == torch.float32 else 5e-2
        return torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    except Exception:  # an architecture whose base takes other arguments
        return False
    finally:
        model.train(was_training)


# -- the loss -------------------------------------------------------------------------------------
def causal_loss(model, inputs: Mapping[str, torch.Tensor], chunk_tokens: int):
    """(sum of the token losses, labels shifted, -100 ignored) of one micro-batch, chunked.

    `inputs` are the model's inputs with its labels (`lit_ft.tasks.base.model_inputs` of the
    batch): the base gets them as the model would (packing's position_ids and no attention
    mask included); only `labels` stays here."""
    hidden = base_of(model)(**{k: v for k, v in inputs.items() if k != "labels"})[0]
    head = output_layer(model)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = inputs["labels"][:, 1:].reshape(-1).to(hidden.device)
    return LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk_tokens)


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The head's matmul dtype: autocast's where it is on (as the plain head's would run),
    else the hidden states'. The softmax is fp32 either way (Hugging Face's loss upcasts too)."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def head_in(compute: torch.dtype, hidden, weight, bias):
    """hidden, weight and bias cast to the matmul dtype (bias may be None)."""
    return hidden.to(compute), weight.to(compute), bias.to(compute) if bias is not None else None


class LinearCrossEntropy(torch.autograd.Function):
    """sum over valid rows of cross_entropy(hidden @ weight.T + bias, targets), by chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        compute = compute_dtype(hidden)
        h, w, b = head_in(compute, hidden, weight, bias)
        wants = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if wants[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            chunk_targets = targets[rows]
            valid = chunk_targets != -100
            logits = F.linear(h[rows], w, b).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe = chunk_targets.clamp(min=0)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if not (wants[0] or wants[1]):
                continue
            # d loss / d logits = softmax - one-hot, zero on ignored rows (in place: one
            # chunk-sized tensor at a time)
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, safe[:, None], torch.full_like(picked[:, None], -1.0))
            grad.mul_(valid[:, None])
            grad = grad.to(compute)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad @ w).to(hidden.dtype)
            if grad_weight is not None:
                if compute == torch.float32:  # in place: no second vocab x hidden tensor
                    grad_weight.addmm_(grad.t(), h[rows])
                else:
                    grad_weight += (grad.t() @ h[rows]).float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.has_bias = bias is not None
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output  # a scalar: the loss's gradients are these times it
        dh = grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None
        dw = (grad_weight * scale).to(ctx.weight_dtype) if grad_weight is not None else None
        db = (grad_bias * scale).to(ctx.weight_dtype) if ctx.has_bias else None
        return dh, dw, db, None, None


# -- per-row and per-token log-probabilities (preference tuning, GRPO) -------------------------
def causal_logps(model, inputs: Mapping[str, torch.Tensor], chunk_tokens: int):
    """(summed log-probability of each row's labelled tokens, their count), as
    `lit_ft.tasks.preference.answer_logps` computes them from full logits, chunked.

    DPO's loss is a function of these per-row sums, so a chunk's gradients cannot be made in
    the forward pass and scaled later (each token gets its row's incoming gradient):
    `LinearLogProbs` keeps the hidden states and recomputes each chunk's logits in backward,
    4 matmuls per chunk instead of 3. Under `torch.no_grad` (the reference) nothing is kept."""
    hidden = base_of(model)(**{k: v for k, v in inputs.items() if k != "labels"})[0]
    head = output_layer(model)
    rows, length = hidden.shape[:2]
    labels = inputs["labels"][:, 1:].to(hidden.device)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    # row of each of the rows x (length - 1) shifted positions: 0, 0, ..., 1, 1, ...
    row_of = torch.arange(rows, device=hidden.device).repeat_interleave(length - 1)
    logps = LinearLogProbs.apply(hidden, head.weight, head.bias, labels.reshape(-1), chunk_tokens)
    sums = torch.zeros(rows, dtype=logps.dtype, device=logps.device).index_add(0, row_of, logps)
    return sums, (labels != -100).sum(-1)


def causal_token_logps(
    model, inputs: Mapping[str, torch.Tensor], start: int, chunk_tokens: int
) -> torch.Tensor:
    """Log-probability of every token from position `start` on, [rows, length - start], in
    fp32, chunked (GRPO's completions: their loss is a function of each token's)."""
    hidden = base_of(model)(**inputs)[0]
    head = output_layer(model)
    rows = hidden.shape[0]
    targets = inputs["input_ids"][:, start:].to(hidden.device)
    hidden = hidden[:, start - 1 : -1].reshape(-1, hidden.shape[-1])  # t - 1 predicts t
    logps = LinearLogProbs.apply(hidden, head.weight, head.bias, targets.reshape(-1), chunk_tokens)
    return logps.view(rows, -1)


class LinearLogProbs(torch.autograd.Function):
    """Per token t: log_softmax(hidden_t @ weight.T + bias)[target_t] (0 where the target is
    -100), by chunks of tokens; fp32 softmax whatever the matmuls' dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        compute = compute_dtype(hidden)
        h, w, b = head_in(compute, hidden, weight, bias)
        out = torch.zeros(h.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            logits = F.linear(h[chunk], w, b).float()
            picked = logits.gather(1, targets[chunk].clamp(min=0)[:, None]).squeeze(1)
            out[chunk] = torch.where(targets[chunk] != -100, picked - logits.logsumexp(-1), 0.0)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.compute, ctx.chunk_tokens = compute, chunk_tokens
        return out

    @staticmethod
    def backward(ctx, grad_tokens):
        hidden, weight, bias, targets = ctx.saved_tensors
        compute, wants = ctx.compute, ctx.needs_input_grad
        h, w, b = head_in(compute, hidden, weight, bias)
        # each token's incoming gradient, zero where ignored
        scale = grad_tokens.float() * (targets != -100)
        grad_hidden = torch.empty_like(hidden) if wants[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        for start in range(0, h.shape[0], ctx.chunk_tokens):
            chunk = slice(start, start + ctx.chunk_tokens)
            logits = F.linear(h[chunk], w, b).float()
            # d log p[target] / d logits = one-hot - softmax, times the token's scale
            grad = logits.softmax(-1).mul_(-scale[chunk, None])
            grad.scatter_add_(1, targets[chunk].clamp(min=0)[:, None], scale[chunk, None])
            grad = grad.to(compute)
            if grad_hidden is not None:
                grad_hidden[chunk] = (grad @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad.t() @ h[chunk]).float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        dw = grad_weight.to(weight.dtype) if grad_weight is not None else None
        db = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, dw, db, None, None


def chunked_loss_problems(model_cfg) -> Problems:
    """The rules of `model.chunked_loss` and `model.loss_chunk_tokens`."""
    problems = Problems()
    setting = model_cfg.get("chunked_loss", "auto")
    problems.need(
        setting == "auto" or isinstance(setting, bool),
        f"model.chunked_loss must be auto, true or false, got {setting!r}",
    )
    problems.positive_int("model.loss_chunk_tokens", model_cfg.get("loss_chunk_tokens", 512))
    return problems
