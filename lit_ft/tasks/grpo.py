"""grpo: online reinforcement learning from rewards with group-relative advantages (GRPO).

Each training micro-batch of b prompts:
1. rollouts: `task.num_generations` (G) completions per prompt sampled from the current policy
   (the trained network itself, so LoRA runs sample from the adapted model) in eval mode, with
   `task.temperature` / `task.top_p`, at most `task.max_new_tokens`, stopping at EOS or the chat's
   end of turn; one batched `generate` of b x G rows with a KV cache;
2. rewards: every function of `task.reward_funcs` (lit_ft/tasks/rewards.py) on the decoded
   completions, weighed by `task.reward_weights`;
3. advantages within each prompt's group, and the clipped policy-gradient loss of
   `task.loss_type` over the completion tokens (lit_ft/tasks/policy_gradient.py), with a KL
   term to the starting model when `task.beta` > 0.

Exact resumption: the sampling draws from its own random stream, seeded from (seed, optimizer
step, batch index, rank) inside `torch.random.fork_rng`, so a resumed run samples the same
completions as the uninterrupted one and the training stream (dropout) is left as it was.

Validation: one completion per validation prompt (greedy by default), its rewards averaged:
`val/reward` and `val/rewards/<name>`; the first prompts' completions are printed.
"""

from __future__ import annotations

import copy
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lit_ft.distributed import gather_from_processes
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.base import Task, TaskContext
from lit_ft.tasks.chat import render, resolve_template, template_problem
from lit_ft.tasks.policy_gradient import (
    LOSS_TYPES,
    SCALINGS,
    aggregate,
    clipped_token_loss,
    group_advantages,
)
from lit_ft.tasks.prompt_batch import COLUMNS_KEY, PROMPT_IDS, collate_prompts
from lit_ft.tasks.rewards import RewardModelScore, call_reward, reward_name
from lit_ft.tasks.rollout_window import Rollout, RolloutWindow
from lit_ft.tasks.user_functions import function_problems, load_function


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


class GRPOTask(Task):
    name = "grpo"
    auto_class = "AutoModelForCausalLM"
    description = "prompts -> sampled completions, rewarded; group-relative policy gradient"
    columns = ("prompt_column",)
    headline, headline_label = "val/reward", "validation mean reward"
    token_loss = False  # a policy-gradient loss over sampled completions
    shifted_labels = True  # a causal LM: the loss choice may chunk its log-probabilities
    row_name = "prompts"

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        reward_funcs: list | None = None,
        reward_weights: list[float] | None = None,
        reward_model: str | None = None,
        num_generations: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        scale_rewards: str = "group",
        loss_type: str = "dapo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        num_iterations: int = 1,
        chat_template: str | None = None,
        eval_greedy: bool = True,
        eval_samples: int = 2,
        rollout: str = "generate",
        vllm_gpu_memory_utilization: float = 0.3,
        vllm_dtype: str = "auto",
    ):
        super().__init__(tokenizer, columns, max_length)
        specs = list(reward_funcs or [])
        self.reward_specs = [s if isinstance(s, str) else reward_name(s, s) for s in specs]
        self.rewards = [s if callable(s) else load_function(s, "task.reward_funcs") for s in specs]
        if reward_model:  # a trained reward model's export (task=reward_model) scores too
            specs.append(reward_model)
            self.reward_specs.append(f"reward_model:{reward_model}")
            self.rewards.append(RewardModelScore(reward_model))
        self.reward_names = [reward_name(f, s) for f, s in zip(self.rewards, specs, strict=True)]
        self.weights = list(reward_weights) if reward_weights else [1.0] * len(self.rewards)
        self.num_generations = self.sequences_per_row = num_generations
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.scale_rewards, self.loss_type = scale_rewards, loss_type
        self.epsilon = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.beta, self.num_iterations = beta, num_iterations
        self.template_source = resolve_template(tokenizer, chat_template)
        self.eval_greedy, self.eval_samples = eval_greedy, eval_samples
        self._reference = None
        self.reference_kind = "none (task.beta=0)"
        self.last_rollout: list[dict] | None = None  # read by lit_ft/observe/completions.py
        self.last_generation_s: float | None = None  # ...and so is this
        self.window = RolloutWindow(num_iterations)  # rollouts reused (num_iterations > 1)
        self.vllm = None  # task.rollout=vllm: the engine (lit_ft/tasks/vllm_rollout.py)
        if rollout == "vllm":
            from lit_ft.tasks.vllm_rollout import VLLMRollout

            self.vllm = VLLMRollout(
                tokenizer, self.sequence_length, vllm_gpu_memory_utilization, vllm_dtype
            )

    @classmethod
    def option_problems(cls, options) -> Problems:
        problems = _reward_problems(options)
        problems += _rollout_problems(options)
        problems.add(template_problem(options.get("chat_template")))
        return problems

    def options(self) -> dict[str, Any]:
        return {**super().options(), "chat_template": self.tokenizer.chat_template}

    def describe(self) -> str:
        weights = ", ".join(
            f"{n} x {w:g}" for n, w in zip(self.reward_names, self.weights, strict=True)
        )
        return (
            f"{self.num_generations} completions per prompt from {self._engine_name()} "
            f"(temperature {self.temperature}, top_p {self.top_p}, up to "
            f"{self.max_new_tokens} tokens); rewards: {weights}; "
            f"loss {self.loss_type}, advantages scaled by {self.scale_rewards}, clip "
            f"{self.epsilon}/{self.epsilon_high}, beta {self.beta} (reference: "
            f"{self.reference_kind}); chat template: {self.template_source}"
        )

    def _engine_name(self) -> str:
        return "vLLM (task.rollout=vllm)" if self.vllm is not None else "generate"

    def report(self) -> dict[str, Any]:
        return {
            "reward_funcs": self.reward_specs,
            "reward_weights": self.weights,
            "num_generations": self.num_generations,
            "loss_type": self.loss_type,
            "scale_rewards": self.scale_rewards,
            "beta": self.beta,
        }

    # -- prompts ---------------------------------------------------------------------------
    def preprocess(self, dataset, split: str, context: TaskContext):
        why = f"are longer than data.block_size={self.max_length} tokens and are left out"
        # every column stays: the reward functions receive them
        return self.encode_dropping(
            dataset, split, context, "prompts", why, remove_columns=[], step="Rendering prompts"
        )

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        keep: list[int] = []
        ids_out = []
        for i, prompt in enumerate(batch[self.column["prompt_column"]]):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = render(self.tokenizer, messages, generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if 0 < len(ids) <= self.max_length:
                keep.append(i)
                ids_out.append(ids)
        out = {k: [v[i] for i in keep] for k, v in batch.items()}
        return {**out, PROMPT_IDS: ids_out}

    def preview(self, dataset) -> str | None:
        if dataset is None or len(dataset) == 0:
            return None
        return f"prompt: {self.tokenizer.decode(dataset[0][PROMPT_IDS])!r}"

    def collate(self):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return partial(collate_prompts, pad=pad, prompt_column=self.column["prompt_column"])

    def select_rows(self, batch, keep: torch.Tensor):
        columns = batch.get(COLUMNS_KEY)
        kept = super().select_rows({k: v for k, v in batch.items() if k != COLUMNS_KEY}, keep)
        if columns is not None:
            index = keep.nonzero().flatten().tolist()
            kept[COLUMNS_KEY] = {k: [v[i] for i in index] for k, v in columns.items()}
        return kept

    def count_targets(self, batch) -> torch.Tensor:
        return torch.tensor(batch["input_ids"].shape[0] * self.num_generations)

    # -- the reference (beta > 0) ----------------------------------------------------------
    def held_models(self) -> list[torch.nn.Module]:
        return [self._reference] if self._reference is not None else []

    def check_model(self, model) -> None:
        if not self.beta:
            return
        if hasattr(model, "disable_adapter"):  # a PeftModel: the base is the reference
            self.reference_kind = "the same network with its LoRA adapters off"
        else:  # copied before any checkpoint loads: the starting model, also after a resume
            self.reference_kind = "a frozen copy of the starting model"
            self._reference = copy.deepcopy(model).eval().requires_grad_(False)

    # -- rollouts --------------------------------------------------------------------------
    def rollout(self, model, batch, generations: int, sample: bool, seed: int):
        """(sequences [b x g, prompt + completion], completion mask, prompt width): every
        completion of prompt i in rows i*g .. i*g + g-1; the mask covers each completion up to
        and including its first stop token."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        stops = self._stop_ids(model)
        if self.vllm is not None:  # task.rollout=vllm
            sequences = self.vllm.generate(
                model, ids, mask, generations, self._settings(sample), seed, stops,
                self.tokenizer.pad_token_id, self.max_new_tokens, self.window_position[0],
            )  # fmt: skip
        else:
            ids = ids.repeat_interleave(generations, dim=0)
            mask = mask.repeat_interleave(generations, dim=0)
            sequences = self.generate(model, ids, mask, sample, seed)
        completion = sequences[:, ids.shape[1] :]
        is_stop = torch.isin(completion, torch.tensor(stops, device=completion.device)).int()
        after_first_stop = (is_stop.cumsum(-1) - is_stop) > 0
        return sequences, ~after_first_stop, ids.shape[1]

    def _settings(self, sample: bool) -> dict[str, Any]:
        settings = {"do_sample": sample, "max_new_tokens": self.max_new_tokens}
        if sample:
            settings |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        return settings

    def generate(self, model, ids, mask, sample: bool, seed: int) -> torch.Tensor:
        """Prompts + completions, one batched `generate` with a KV cache, in eval mode, from
        the rollout's own random stream (`seed`)."""
        was_training = model.training
        model.eval()  # no dropout while sampling; restored below
        devices = [ids.device] if ids.device.type == "cuda" else []
        settings = self._settings(sample)
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)  # the rollout's own stream: the training one stays
                sequences = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **settings,
                )
        finally:
            model.train(was_training)
        return sequences

    def _stop_ids(self, model) -> list[int]:
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, list | tuple) else [eos]

    def completion_texts(self, sequences, completion_mask, width: int) -> list[str]:
        rows = [
            [t for t, keep in zip(row, kept, strict=True) if keep]
            for row, kept in zip(
                sequences[:, width:].tolist(), completion_mask.tolist(), strict=True
            )
        ]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def score(self, batch, completions: list[str], generations: int):
        """(weighted total per completion, {name: scores}) as float32 tensors on the batch's
        device."""
        prompts = [p for p in batch[COLUMNS_KEY]["_prompt"] for _ in range(generations)]
        columns = {
            k: [v for v in values for _ in range(generations)]
            for k, values in batch[COLUMNS_KEY].items()
            if k != "_prompt"
        }
        device = batch["input_ids"].device
        per_function = {}
        total = torch.zeros(len(completions), device=device)
        for fn, name, weight in zip(self.rewards, self.reward_names, self.weights, strict=True):
            scores = call_reward(fn, name, prompts, completions, columns)
            per_function[name] = torch.tensor(scores, device=device)
            total = total + weight * per_function[name]
        return total, per_function

    @property
    def sequence_length(self) -> int:
        return self.max_length + self.max_new_tokens  # a prompt and its completion

    def completion_logps(self, model, sequences, mask, width: int) -> torch.Tensor:
        """Log-probabilities of the completion tokens, [rows, completion tokens], in fp32:
        chunk by chunk when the loss choice says so (the [rows, tokens, vocab] logits never
        exist), else from the model's logits; the same numbers (tests/test_grpo.py)."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left-padded prompts start at 0
        inputs = {"input_ids": sequences, "attention_mask": mask, "position_ids": positions}
        if self.loss_choice is not None and self.loss_choice.chunked:
            from lit_ft.model.chunked_loss import causal_token_logps

            return causal_token_logps(model, inputs, width, self.loss_choice.chunk_tokens)
        logits = model(**inputs).logits
        logits = logits[:, width - 1 : -1].float()
        targets = sequences[:, width:]
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)

    # -- training --------------------------------------------------------------------------
    def training_loss(self, model, batch):
        g = self.num_generations
        step, micro = self.window_position
        first_use = RolloutWindow.iteration(step, self.num_iterations) == 0
        if first_use:
            rollout = self._sample(model, batch)
        else:  # the window's rollouts again (task.num_iterations > 1)
            rollout = self.window.reuse(micro, step, batch["input_ids"])
            self.last_generation_s = None
        prompt_mask = batch["attention_mask"].repeat_interleave(g, dim=0)
        completion_mask = rollout.completion_mask
        mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
        logps = self.completion_logps(model, rollout.sequences, mask, rollout.width)
        batch["_real_tokens"] = mask.sum()  # the token counter's: prompts and completions
        if first_use:
            # The old policy is the one that just sampled: ratio 1 at the window's first step
            # (the same numbers as a separate no-grad pass, without paying for it).
            rollout.old_logps = logps.detach()
            if self.beta:
                with torch.no_grad():
                    rollout.reference_logps = self._reference_logps(
                        model, rollout.sequences, mask, rollout.width
                    )
            if self.num_iterations > 1:
                self.window.keep(micro, rollout)
        token_loss, clipped, kl = clipped_token_loss(
            logps,
            rollout.old_logps,
            rollout.advantages,
            self.epsilon,
            self.epsilon_high,
            rollout.reference_logps,
            self.beta,
        )
        loss, count = aggregate(token_loss, completion_mask, self.loss_type, self.max_new_tokens)
        metrics = self._step_metrics(rollout, clipped, kl)
        return loss, count.to(loss.device), metrics

    def _sample(self, model, batch) -> Rollout:
        """This micro-batch's completions from the current policy, rewarded, with their
        group-relative advantages; completions.jsonl's lines set aside."""
        g = self.num_generations
        started = time.perf_counter()
        sequences, completion_mask, width = self.rollout(model, batch, g, True, self.step_seed)
        self.last_generation_s = time.perf_counter() - started
        completions = self.completion_texts(sequences, completion_mask, width)
        total, per_function = self.score(batch, completions, g)
        # scale_rewards=batch: the spread of every process's micro-batch (1 process with b x w
        # prompts and w processes with b each scale alike)
        everyone = gather_from_processes(total) if self.scale_rewards == "batch" else None
        advantages = group_advantages(total, g, self.scale_rewards, everyone)
        self.last_rollout = self._records(batch, completions, total, per_function, advantages)
        return Rollout(
            batch["input_ids"], sequences, completion_mask, width, total, per_function,
            advantages, completions,
        )  # fmt: skip

    def _step_metrics(self, rollout: Rollout, clipped, kl) -> dict[str, torch.Tensor]:
        total, mask = rollout.total, rollout.completion_mask
        lengths = mask.sum(-1).float()
        grouped = total.view(-1, self.num_generations)
        metrics = {
            "reward": total.mean(),
            "reward_std": total.std() if total.numel() > 1 else torch.zeros(()),
            "frac_reward_zero_std": (grouped.std(dim=1) < 1e-6).float().mean(),
            "completion_length": lengths.mean(),
            "clip_ratio": _masked_mean(clipped.float(), mask),
        }
        if self.last_generation_s is not None:  # sampled at this step
            seconds = self.last_generation_s
            metrics["generation_tokens_per_s"] = torch.tensor(lengths.sum().item() / seconds)
            metrics["generation_s"] = torch.tensor(seconds)
        for name, scores in rollout.per_function.items():
            metrics[f"rewards/{name}"] = scores.mean()
            metrics[f"rewards/{name}_std"] = scores.std() if scores.numel() > 1 else scores * 0
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), mask)
        return metrics

    # -- the window's rollouts in checkpoints (task.num_iterations > 1) --------------------
    def checkpoint_state(self) -> dict[str, Any] | None:
        return self.window.state() if self.num_iterations > 1 else None

    def load_checkpoint_state(self, state: dict[str, Any] | None) -> None:
        self.window.load(state)

    def _records(self, batch, completions, total, per_function, advantages) -> list[dict]:
        """completions.jsonl's lines for this micro-batch (lit_ft/observe/completions.py)."""
        g = self.num_generations
        prompts = batch[COLUMNS_KEY]["_prompt"]
        scores = {name: values.tolist() for name, values in per_function.items()}
        return [
            {
                "prompt": prompts[i // g],
                "completion": text,
                "reward": round(float(total[i]), 6),
                "rewards": {name: round(values[i], 6) for name, values in scores.items()},
                "advantage": round(float(advantages[i]), 6),
            }
            for i, text in enumerate(completions)
        ]

    def prepare_with_model(self, model, datamodule) -> None:
        """Each reward function called once on the first training prompt with an empty and a
        short completion, before any training: a function that cannot take the rows'
        columns, or returns the wrong thing, stops the run here with its name."""
        train = datamodule.datasets.get("train")
        if train is None or len(train) == 0:
            return
        batch = self.collate()([train[0]])
        prompts = batch[COLUMNS_KEY]["_prompt"] * 2
        columns = {k: v * 2 for k, v in batch[COLUMNS_KEY].items() if k != "_prompt"}
        for fn, name in zip(self.rewards, self.reward_names, strict=True):
            call_reward(fn, name, prompts, ["", " 1."], columns)

    def _reference_logps(self, model, sequences, mask, width):
        if self._reference is not None:
            if next(self._reference.parameters()).device != sequences.device:
                self._reference.to(sequences.device)
            return self.completion_logps(self._reference, sequences, mask, width)
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self.completion_logps(model, sequences, mask, width)
        raise LitFtError("task=grpo with task.beta > 0 has no reference model")

    def evaluator(self):
        from lit_ft.tasks.rollout_evaluator import RolloutEvaluator

        return RolloutEvaluator(self)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _reward_problems(options) -> Problems:
    """The rewards: functions that import, a reward model that is one, a weight for each."""
    problems = Problems()
    funcs = options.get("reward_funcs") or []
    model_dir = options.get("reward_model")
    problems.need(
        model_dir is None or (Path(str(model_dir)) / "config.json").is_file(),
        f"task.reward_model='{model_dir}' holds no model (no config.json); give the hf_model "
        "folder of a task=reward_model run",
    )
    problems.need(
        len(funcs) > 0 or model_dir is not None,
        "task.reward_funcs is empty: name at least one reward function, e.g. "
        "task.reward_funcs=[lit_ft.tasks.rewards:numeric_match] or [my_rewards.py:fn], or "
        "a reward model (task.reward_model=<run>/hf_model)",
    )
    for spec in funcs:
        problems += function_problems(spec, "task.reward_funcs")
    weights = options.get("reward_weights")
    problems.need(
        weights is None or len(weights) == len(funcs) + (model_dir is not None),
        f"task.reward_weights has {len(weights or [])} weights for "
        f"{len(funcs) + (model_dir is not None)} reward functions (the reward model last); "
        "give one per function (or null: 1 each)",
    )
    return problems


def _rollout_problems(options) -> Problems:
    """Sampling and the loss: group size, loss type, scaling, temperature, clipping, KL."""
    problems = Problems()
    g = options.get("num_generations")
    problems.need(
        isinstance(g, int) and not isinstance(g, bool) and g >= 2,
        f"task.num_generations must be an integer >= 2 (a group needs two completions to "
        f"compare), got {g!r}",
    )
    problems.need(
        options.get("loss_type") in LOSS_TYPES,
        f"task.loss_type='{options.get('loss_type')}' is unknown; use one of "
        f"{', '.join(LOSS_TYPES)}",
    )
    problems.need(
        options.get("scale_rewards") in SCALINGS,
        f"task.scale_rewards='{options.get('scale_rewards')}' is unknown; use one of "
        f"{', '.join(SCALINGS)}",
    )
    for key in ("temperature", "epsilon", "max_new_tokens"):
        problems.need(
            _positive(options.get(key)),
            f"task.{key} must be positive, got {options.get(key)!r}",
        )
    top_p = options.get("top_p")
    problems.need(_positive(top_p) and top_p <= 1, f"task.top_p must be in (0, 1], got {top_p!r}")
    beta = options.get("beta")
    problems.need(
        isinstance(beta, int | float) and not isinstance(beta, bool) and beta >= 0,
        f"task.beta must be a number >= 0, got {beta!r}",
    )
    mu = options.get("num_iterations")
    problems.need(
        isinstance(mu, int) and not isinstance(mu, bool) and mu >= 1,
        f"task.num_iterations must be an integer >= 1 (optimizer steps on each window's "
        f"rollouts), got {mu!r}",
    )
    return problems
