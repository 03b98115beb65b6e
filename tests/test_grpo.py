"""GRPO (task=grpo): advantages and each loss type by hand; the step's loss and gradients the
same at accumulation 1 vs 4 and on 1 vs 2 processes (on fixed rollouts, so every layout sees
the same completions); rollouts from the LoRA-adapted policy; rewards checked; a run that
raises its reward; SIGKILL resume bit-identical (tests/test_resume.py)."""

from __future__ import annotations

import copy
import json
import math
from functools import partial
from pathlib import Path

import datasets
import pytest
import torch
from helpers import tiny_models
from helpers.fixed_rollouts import FixedRolloutGRPO, completion
from helpers.step_gradients import fit_one_step

import lit_ft
from lit_ft.errors import LitFtError
from lit_ft.tasks import TaskContext
from lit_ft.tasks.grpo import GRPOTask
from lit_ft.tasks.policy_gradient import aggregate, clipped_token_loss, group_advantages
from lit_ft.tasks.rewards import call_reward, numeric_match

PROMPTS = ["Count:", "Add two and two.", "Name a number", "Say it"]


def _gpt2():
    return tiny_models.gpt2(bos_token_id=0, eos_token_id=0)


def _ids_length(prompts, completions, **columns) -> list[float]:
    """A reward the fixed completions spread: their decoded length."""
    return [float(len(c)) for c in completions]


def _rows(task):
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "answer": ["1", "4", "7", "2"]})
    return list(task.preprocess(data, "train", TaskContext("t", load_from_cache=False)))


def _task(tokenizer, cls=GRPOTask, **options):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    settings = {"num_generations": 4, "max_new_tokens": 5, "reward_funcs": [_ids_length]}
    return cls(tokenizer, {"prompt_column": "prompt"}, 32, **{**settings, **options})


# -- the arithmetic, by hand -----------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    group = group_advantages(rewards, 4, "group")
    # group 1: mean 0.5, unbiased std 0.5774 -> +-0.866; group 2: all equal -> 0
    assert group[:4].tolist() == pytest.approx([0.8659, -0.8659, -0.8659, 0.8659], abs=2e-4)
    assert group[4:].tolist() == [0.0] * 4
    assert group_advantages(rewards, 4, "none").tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    batch = group_advantages(rewards, 4, "batch")
    assert batch[0].item() == pytest.approx(0.5 / (rewards.std().item() + 1e-4))


def test_each_loss_type_by_hand():
    # two completions of 2 and 4 tokens (mask), advantages 1 and -0.5, the policy unchanged
    # (ratio 1): l_t = -A on each completion token
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    logps = torch.zeros(2, 4, requires_grad=True)
    token_loss, clipped, _ = clipped_token_loss(
        logps, logps.detach(), torch.tensor([1.0, -0.5]), 0.2, 0.2
    )
    assert not clipped.any()
    grpo, n = aggregate(token_loss, mask, "grpo", 4)  # mean(-1, 0.5) = -0.25
    assert (grpo.item(), int(n)) == (pytest.approx(-0.25), 2)
    dr, n = aggregate(token_loss, mask, "dr_grpo", 4)  # (-2 + 2) / (2 x 4) = 0
    assert (dr.item(), int(n)) == (pytest.approx(0.0), 2)
    dapo, n = aggregate(token_loss, mask, "dapo", 4)  # (-2 + 2) / 6 tokens = 0
    assert (dapo.item(), int(n)) == (pytest.approx(0.0), 6)
    # a moved policy: ratio e^0.5 = 1.65 > 1.2 is clipped for A > 0 (no gain past the clip)
    token_loss, clipped, _ = clipped_token_loss(
        torch.full((1, 1), 0.5), torch.zeros(1, 1), torch.tensor([2.0]), 0.2, 0.2
    )
    assert clipped.all() and token_loss.item() == pytest.approx(-1.2 * 2.0)
    # KL (k3) to a reference 0.1 below: e^-0.1 + 0.1 - 1 = 0.00484, x beta 0.5
    token_loss, _, kl = clipped_token_loss(
        torch.zeros(1, 1),
        torch.zeros(1, 1),
        torch.zeros(1),
        0.2,
        0.2,
        torch.full((1, 1), -0.1),
        0.5,
    )
    assert kl.item() == pytest.approx(math.exp(-0.1) + 0.1 - 1, rel=1e-5)  # float32
    assert token_loss.item() == pytest.approx(0.5 * kl.item())


# -- one step, whatever the layout -------------------------------------------------------------
def _hand_loss(task, rows) -> float:
    """The step's loss from its definition, over all 16 fixed completions at once: with the
    policy unchanged l_t = -A_i on each of completion i's n_i tokens."""
    eos = task.tokenizer.eos_token_id
    advantages, lengths = [], []
    for row in rows:
        texts, ns = [], []
        for k in range(task.num_generations):
            ids = completion(row["prompt_input_ids"][-1], k)[: task.max_new_tokens]
            kept = ids[: ids.index(eos) + 1] if eos in ids else ids
            ns.append(len(kept))
            texts.append(task.tokenizer.decode(kept, skip_special_tokens=True))
        scores = torch.tensor(_ids_length(None, texts))
        advantages += group_advantages(scores, task.num_generations, "group").tolist()
        lengths += ns
    pairs = list(zip(advantages, lengths, strict=True))
    if task.loss_type == "grpo":
        return -sum(a for a, _ in pairs) / len(pairs)
    if task.loss_type == "dr_grpo":
        return -sum(a * n for a, n in pairs) / (len(pairs) * task.max_new_tokens)
    return -sum(a * n for a, n in pairs) / sum(lengths)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_accumulation_gives_the_step_of_the_whole_batch(gpt2_tokenizer, tmp_path, loss_type):
    task = _task(gpt2_tokenizer, FixedRolloutGRPO, loss_type=loss_type)
    rows = _rows(task)
    whole = fit_one_step(task, _gpt2, rows, 4, 1, tmp_path / "b4.pt")
    accumulated = fit_one_step(task, _gpt2, rows, 1, 4, tmp_path / "b1a4.pt")
    assert float(whole["loss"]) == pytest.approx(_hand_loss(task, rows), abs=1e-6)
    torch.testing.assert_close(whole["loss"], accumulated["loss"], atol=1e-6, rtol=1e-5)
    for name, grad in whole["grads"].items():
        torch.testing.assert_close(grad, accumulated["grads"][name], atol=1e-7, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in whole["grads"].values())  # a real gradient


def test_chunked_log_probabilities_give_the_plain_step(gpt2_tokenizer):
    """model.chunked_loss for GRPO: per-token log-probabilities by chunks of 7 tokens (the
    [rows, tokens, vocab] logits never formed) give the plain path's loss and gradients."""
    from lit_ft.model.chunked_loss import LossChoice

    task = _task(gpt2_tokenizer, FixedRolloutGRPO)
    batch = task.collate()(_rows(task))
    got = {}
    for chunked in (False, True):
        task.loss_choice = LossChoice(chunked, 7, "test") if chunked else None
        model = _gpt2()
        loss, count, _ = task.training_loss(model, dict(batch))
        loss.backward()
        got[chunked] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(got[True][0], got[False][0], atol=1e-6, rtol=1e-5)
    for name, grad in got[False][1].items():
        torch.testing.assert_close(got[True][1][name], grad, atol=1e-7, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, scale",
    [("grpo", "group"), ("dr_grpo", "group"), ("dapo", "group"), ("dapo", "batch")],
)
def test_two_processes_give_the_step_of_the_whole_batch(gpt2_tokenizer, tmp_path, loss_type, scale):
    """scale_rewards=batch: the spread of both processes' rewards, as one process's of all."""
    task = _task(gpt2_tokenizer, FixedRolloutGRPO, loss_type=loss_type, scale_rewards=scale)
    rows = _rows(task)
    whole = fit_one_step(task, _gpt2, rows, 4, 1, tmp_path / "b4.pt")
    ddp = fit_one_step(
        task, _gpt2, rows, 2, 1, tmp_path / "ddp.pt",
        strategy="ddp_spawn", accelerator="cpu", devices=2,
    )  # fmt: skip
    torch.testing.assert_close(whole["loss"], ddp["loss"], atol=1e-6, rtol=1e-5)
    for name, grad in whole["grads"].items():
        torch.testing.assert_close(grad, ddp["grads"][name], atol=1e-7, rtol=1e-4)


# -- rollouts ------------------------------------------------------------------------------
def test_rollouts_come_from_the_lora_adapted_policy(gpt2_tokenizer):
    from peft import LoraConfig, get_peft_model

    task = _task(gpt2_tokenizer, max_new_tokens=8)
    batch = task.collate()(_rows(task)[:2])
    model = get_peft_model(_gpt2(), LoraConfig(r=4, target_modules=["c_attn"]))
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)
    model.train()
    adapted, _, width = task.rollout(model, batch, 1, False, 0)
    with model.disable_adapter():
        base, _, _ = task.rollout(model, batch, 1, False, 0)
    merged = copy.deepcopy(model).merge_and_unload().eval()
    want = merged.generate(
        **{k: v for k, v in batch.items() if not k.startswith("_")},
        do_sample=False, max_new_tokens=8, pad_token_id=task.tokenizer.pad_token_id,
    )  # fmt: skip
    assert torch.equal(adapted, want) and not torch.equal(adapted[:, width:], base[:, width:])
    assert model.training  # generation ran in eval mode and gave training back


def test_the_same_seed_samples_the_same_completions_and_leaves_the_training_stream(
    gpt2_tokenizer,
):
    task = _task(gpt2_tokenizer, max_new_tokens=8)
    batch = task.collate()(_rows(task)[:2])
    model = _gpt2()
    torch.manual_seed(123)
    first, _, _ = task.rollout(model, batch, 4, True, seed=7)
    after = torch.rand(1)
    torch.manual_seed(123)
    again, _, _ = task.rollout(model, batch, 4, True, seed=7)
    assert torch.equal(first, again) and torch.equal(torch.rand(1), after)
    other, _, _ = task.rollout(model, batch, 4, True, seed=8)
    assert not torch.equal(first, other)


# -- rewards -------------------------------------------------------------------------------
def test_built_in_numeric_match():
    got = numeric_match(None, ["it is 4", "4.0", "five", "1,000"], answer=["4", "4", "5", "1000"])
    assert got == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0], "must return a list of 2 numbers (one per completion), got 1 values"),
        ("no", "must return a list of 2 numbers (one per completion), got str"),
        ([1.0, float("nan")], "returned nan for completion 1"),
        ([1.0, "x"], "returned 'x' for completion 1"),
    ],
)
def test_a_reward_function_that_returns_the_wrong_thing_is_named(returned, message):
    def bad(prompts, completions, **kw):
        return returned

    with pytest.raises(LitFtError, match="reward function 'bad' " + message.replace("(", r"\(")
                       .replace(")", r"\)")):  # fmt: skip
        call_reward(bad, "bad", ["p", "p"], ["a", "b"], {})


def test_bad_grpo_options_are_reported_together():
    problems = GRPOTask.option_problems(
        {
            "reward_funcs": ["no_such_module_xyz:fn"],
            "reward_weights": [1.0, 2.0],
            "num_generations": 1,
            "loss_type": "ppo",
            "scale_rewards": "group",
            "temperature": 1.0,
            "epsilon": 0.2,
            "max_new_tokens": 8,
            "top_p": 1.0,
            "beta": 0.0,
            "num_iterations": 1,
        }
    )
    text = str(problems)
    assert "cannot import module 'no_such_module_xyz'" in text
    assert "task.reward_weights has 2 weights for 1 reward functions" in text
    assert "task.num_generations must be an integer >= 2" in text
    assert "task.loss_type='ppo' is unknown" in text


# -- runs ----------------------------------------------------------------------------------
def _prompts_file(tmp_path, text_file) -> str:
    words = text_file.read_text().split()
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": " ".join(words[i : i + 4]), "answer": str(i % 7)} for i in range(0, 600, 20)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _grpo_overrides(tiny_overrides, prompts: str, *extra: str) -> list[str]:
    return [
        *tiny_overrides,
        "task=grpo",
        "data.path=json",
        f"data.data_files={prompts}",
        "data.batch_size=2",
        "task.num_generations=4",
        "task.max_new_tokens=6",
        "trainer.max_steps=3",
        "callbacks.generations.num_prompts=0",
        *extra,
    ]


def test_a_run_logs_every_completion_with_its_reward(tiny_overrides, text_file, tmp_path):
    """completions.jsonl: steps x prompts x generations lines, each reward the function's own
    on the logged completion, advantages centred within each group; the rewards are in the
    step metrics and the best checkpoint follows val/reward."""
    overrides = _grpo_overrides(
        tiny_overrides,
        _prompts_file(tmp_path, text_file),
        "task.reward_funcs=[lit_ft.tasks.rewards:length_penalty]",
        "trainer.log_every_n_steps=1",
    )
    results = lit_ft.train_from_overrides(overrides)
    run_dir = Path(results["output_dir"])
    lines = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 2 * 4 and [x["step"] for x in lines[::8]] == [1, 2, 3]
    for line in lines:
        assert line["reward"] == pytest.approx(-len(line["completion"]) / 100, abs=1e-6)
        assert line["rewards"] == {"length_penalty": line["reward"]}
    for group in range(0, len(lines), 4):
        assert sum(x["advantage"] for x in lines[group : group + 4]) == pytest.approx(0, abs=1e-4)
    assert "val/reward" in results["metrics"]["after"]
    logged = (run_dir / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/generation_share" in logged and "train/rewards/length_penalty" in logged


def test_without_a_validation_loss_the_callbacks_follow_the_reward():
    from lit_ft.config.compose import compose

    cfg = compose(["task=grpo", "callbacks=early_stopping"])
    best, stop = cfg.callbacks.best_checkpoint, cfg.callbacks.early_stopping
    assert (best.monitor, best.mode, stop.monitor, stop.mode) == ("val/reward", "max") * 2
    assert best.filename == "best-step{step:06d}-reward{val/reward:.4f}"
    assert cfg.optimized_metric == "val/reward"
    default = compose([])
    assert (default.callbacks.best_checkpoint.monitor, default.optimized_metric) == (
        "val/loss",
    ) * 2


def test_a_reward_function_that_fails_stops_the_run_before_training(
    tiny_overrides, text_file, tmp_path
):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(
        "def needs_solution(prompts, completions, solution, **kw):\n    return [1.0]\n"
    )
    overrides = _grpo_overrides(
        tiny_overrides,
        _prompts_file(tmp_path, text_file),
        f"task.reward_funcs=[{rewards}:needs_solution]",
    )
    with pytest.raises(LitFtError, match="reward function 'needs_solution' failed") as err:
        lit_ft.train_from_overrides(overrides)
    assert "columns answer" in str(err.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))  # nothing trained


@pytest.mark.slow
def test_a_reward_model_export_rewards_as_it_scores(tiny_overrides, text_file, tmp_path):
    """A task=reward_model run's export as task.reward_model: each logged reward equals the
    export's logit on prompt + completion + EOS, computed here with plain transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Say {i}:", "chosen": f" {i} is fine", "rejected": f" no {i}"})
            + "\n"
            for i in range(16)
        )
    )
    reward_run = lit_ft.train_from_overrides(
        [*tiny_overrides, "task=reward_model", "data.path=json", f"data.data_files={pairs}",
         "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'rm'}"]
    )  # fmt: skip
    export = reward_run["export_dir"]
    overrides = _grpo_overrides(
        tiny_overrides,
        _prompts_file(tmp_path, text_file),
        f"task.reward_model={export}",
        f"paths.output_dir={tmp_path / 'grpo'}",
    )
    lit_ft.train_from_overrides(overrides)
    lines = (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        for line in map(json.loads, lines[:8]):
            ids = tokenizer(line["prompt"] + line["completion"] + tokenizer.eos_token)["input_ids"]
            want = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
            assert line["rewards"]["reward_model"] == pytest.approx(want, abs=1e-4)


# -- task.num_iterations: one window's rollouts for several steps --------------------------
def test_a_reused_window_trains_on_the_ratio_to_the_sampling_policy(gpt2_tokenizer):
    """num_iterations=2: step 2 trains on step 1's completions (sampled once), its loss the
    clipped ratio between the updated policy and the one that sampled them, computed here
    from plain HF forwards of the two models' weights."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lit_ft.model.build import ModelSpec
    from lit_ft.training.module import FineTuneModule

    task = _task(gpt2_tokenizer, num_iterations=2, max_new_tokens=6, epsilon=0.05)
    rows = _rows(task)
    sampled = []
    generate = task.generate
    task.generate = lambda *a, **k: sampled.append(1) or generate(*a, **k)
    model = _gpt2()
    start = copy.deepcopy(model.state_dict())
    seen = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                seen["after_step_1"] = copy.deepcopy(pl_module.model.state_dict())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step] = float(pl_module.step_loss.value)

    module = FineTuneModule(
        ModelSpec(task="grpo", name_or_path="unused"),
        optimizer=partial(torch.optim.SGD, lr=3.0),
        scheduler=None,
        num_training_steps=2,
        task=task,
        model=model,
    )
    # the sampler's repeat of the window (tests/test_data.py), here by hand: one batch twice
    loader = DataLoader(rows + rows, batch_size=4, shuffle=False, collate_fn=task.collate())
    trainer = L.Trainer(
        max_steps=2, precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    assert len(sampled) == 1  # one generation for both steps

    rollout = task.window.rollouts[0]
    batch = task.collate()(rows)
    prompt_mask = batch["attention_mask"].repeat_interleave(task.num_generations, dim=0)
    mask = torch.cat([prompt_mask, rollout.completion_mask.long()], dim=1)

    def token_logps(state):
        reference = _gpt2()
        reference.load_state_dict(state)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = reference(
                input_ids=rollout.sequences, attention_mask=mask, position_ids=positions
            ).logits
        logps = torch.log_softmax(logits[:, rollout.width - 1 : -1].float(), dim=-1)
        return logps.gather(-1, rollout.sequences[:, rollout.width :, None]).squeeze(-1)

    ratio = torch.exp(token_logps(seen["after_step_1"]) - token_logps(start))
    advantage = rollout.advantages[:, None]
    token_loss = -torch.min(ratio * advantage, ratio.clamp(0.95, 1.05) * advantage)
    kept = rollout.completion_mask.float()
    expected = float((token_loss * kept).sum() / kept.sum())  # dapo: the token mean
    assert seen[2] == pytest.approx(expected, abs=1e-6)
    moved = (ratio - 1).abs()[rollout.completion_mask]
    assert moved.max() > 0.05  # the policy moved past the clip range: clipping mattered
    assert seen[1] != pytest.approx(seen[2], abs=1e-4)
