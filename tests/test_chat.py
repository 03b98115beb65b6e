"""Chat fine-tuning: which tokens are trained, across real template styles, and packing.

The templates (tests/helpers/chat_templates.py) are written in the styles real tokenizers
ship: ChatML, Llama 3 headers, a default system prompt. Every assistant turn must be trained
with its end-of-turn text, nothing else; a template that rewrites earlier turns is refused.
"""

from __future__ import annotations

import copy
import json
import random

import datasets
import pytest
from helpers.config import tiny_model_overrides

from lit_ft.config import compose
from lit_ft.errors import LitFtError
from lit_ft.tasks import TaskContext, build_task
from lit_ft.tasks.chat import NAMED_TEMPLATES, answer_spans, tokens_and_labels
from lit_ft.tasks.packing import best_fit_decreasing, packing_efficiency
from lit_ft.validate import validate_config
from tests.helpers.chat_templates import CHATML, DROPS_PAST_REASONING, LLAMA3, SYSTEM_DEFAULT

CHAT = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What does len do?"},
    {"role": "assistant", "content": "It counts the items of a container."},
    {"role": "user", "content": "And its parameter?"},
    {"role": "assistant", "content": "One object, passed by position."},
    {"role": "tool", "content": "builtins.len: (obj, /)"},
    {"role": "assistant", "content": "Right: the signature is len(obj, /)."},
]
ANSWERS = [m["content"] for m in CHAT if m["role"] == "assistant"]
COLUMNS = {"messages_column": "messages", "prompt_column": None, "response_column": None}


@pytest.fixture
def tokenizer(gpt2_tokenizer):
    """A copy per test: a task sets its chat template on the tokenizer it is given."""
    copied = copy.deepcopy(gpt2_tokenizer)
    copied.chat_template = None
    return copied


def _trained_runs(tokenizer, ids, labels) -> list[str]:
    """The trained stretches of a row, decoded one by one."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize(
    ("template", "end_of_turn"),
    [(CHATML, "<|im_end|>\n"), (LLAMA3, "<|eot_id|>"), (SYSTEM_DEFAULT, "<|endoftext|>")],
    ids=["chatml", "llama3", "system-default"],
)
def test_every_assistant_turn_and_its_end_are_trained_and_nothing_else(
    tokenizer, template, end_of_turn
):
    task = build_task("instruction", tokenizer, COLUMNS, max_length=512, chat_template=template)
    ids, labels = task.encode_row({"messages": CHAT})
    # the ids are the template's own tokenization of the whole chat (what inference feeds)
    assert ids == list(tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False))
    runs = _trained_runs(tokenizer, ids, labels)
    lead = " " if template == SYSTEM_DEFAULT else ""  # that template puts a space before answers
    assert runs == [lead + answer + end_of_turn for answer in ANSWERS]
    # system, user and tool turns are context only
    for message in CHAT:
        if message["role"] != "assistant":
            assert not any(message["content"] in run for run in runs)


def test_last_assistant_only(tokenizer):
    task = build_task(
        "instruction", tokenizer, COLUMNS, 512, chat_template=CHATML, train_on="last_assistant"
    )
    ids, labels = task.encode_row({"messages": CHAT})
    assert _trained_runs(tokenizer, ids, labels) == [ANSWERS[-1] + "<|im_end|>\n"]


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_the_turn(tokenizer):
    chat = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add them</think>4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>again</think>6"},
    ]
    task = build_task("instruction", tokenizer, COLUMNS, 512, chat_template=DROPS_PAST_REASONING)
    with pytest.raises(LitFtError, match=r"up to message 1 \(0:user, 1:assistant\)"):
        task.encode_row({"messages": chat})
    # the last turn alone renders as a prefix: that much can be trained, when asked for
    last = build_task(
        "instruction",
        copy.deepcopy(tokenizer),
        COLUMNS,
        512,
        chat_template=DROPS_PAST_REASONING,
        train_on="last_assistant",
    )
    ids, labels = last.encode_row({"messages": chat})
    assert _trained_runs(tokenizer, ids, labels) == ["<think>again</think>6<|im_end|>\n"]


def test_prompt_and_response_columns_use_the_plain_template_without_one(tokenizer):
    columns = {"prompt_column": "q", "response_column": "a", "messages_column": None}
    task = build_task("instruction", tokenizer, columns, max_length=64)
    assert task.template_source == "plain" and tokenizer.chat_template == NAMED_TEMPLATES["plain"]
    ids, labels = task.encode_row({"q": "Say yes.", "a": "yes"})
    assert tokenizer.decode(ids) == "user: Say yes.\nassistant: yes<|endoftext|>"
    assert _trained_runs(tokenizer, ids, labels) == [" yes<|endoftext|>"]
    # at inference the same template gives the prompt the training rows began with
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say yes."}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(ids).startswith(prompt)


def test_the_chat_template_is_saved_with_the_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    build_task("instruction", tokenizer, COLUMNS, 64, chat_template="chatml")
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == NAMED_TEMPLATES["chatml"]


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_named_templates_render_chats_as_growing_prefixes(tokenizer, name):
    task = build_task("instruction", tokenizer, COLUMNS, 512, chat_template=name)
    ids, labels = task.encode_row({"messages": CHAT})
    runs = _trained_runs(tokenizer, ids, labels)
    assert len(runs) == 3 and all(a in run for a, run in zip(ANSWERS, runs, strict=True))


def test_the_preview_marks_the_trained_tokens(tokenizer):
    task = build_task("instruction", tokenizer, COLUMNS, 512, chat_template="chatml")
    rows = datasets.Dataset.from_dict({"messages": [CHAT]})
    processed = task.preprocess(rows, "train", TaskContext("t", load_from_cache=False))
    preview = task.preview(processed)
    assert "«It counts the items of a container.<|im_end|>\n»" in preview
    assert "What does len do?" in preview and "«What does len do" not in preview


def test_bad_chat_options_are_reported_together():
    cfg = compose(["task=instruction", "task.chat_template=mistral", "task.train_on=every"])
    with pytest.raises(LitFtError) as err:
        validate_config(cfg)
    assert "task.chat_template='mistral'" in str(err.value)
    assert "task.train_on='every'" in str(err.value)


def test_spans_need_an_assistant_message(tokenizer):
    tokenizer.chat_template = CHATML
    with pytest.raises(LitFtError, match="without an assistant message"):
        answer_spans(tokenizer, [{"role": "user", "content": "hi"}], "all_assistant")
    text, spans = answer_spans(tokenizer, CHAT[:3], "all_assistant")
    ids, labels = tokens_and_labels(tokenizer, text, spans)
    assert sum(label != -100 for label in labels) < len(ids)


# -- packing -----------------------------------------------------------------------------
def _in_order(lengths: list[int], capacity: int) -> int:
    """Blocks that packing in data order needs (a new block when the next does not fit)."""
    blocks, used = 0, capacity
    for n in lengths:
        if used + n > capacity:
            blocks, used = blocks + 1, 0
        used += n
    return blocks


def test_best_fit_decreasing_fills_blocks_better_than_packing_in_order():
    rng = random.Random(0)
    # skewed: mostly short answers, some long ones (as chat data is)
    lengths = [
        rng.randint(90, 120) if rng.random() < 0.3 else rng.randint(5, 30) for _ in range(500)
    ]
    blocks = best_fit_decreasing(lengths, 128)
    assert sorted(i for block in blocks for i in block) == list(range(500))  # each once
    assert all(sum(lengths[i] for i in block) <= 128 for block in blocks)
    ours = sum(lengths) / (len(blocks) * 128)
    in_order = sum(lengths) / (_in_order(lengths, 128) * 128)
    print(f"packing efficiency: best fit decreasing {ours:.1%}, in order {in_order:.1%}")
    assert ours > in_order + 0.1 and ours > 0.9
    assert best_fit_decreasing(lengths, 128) == blocks  # deterministic
    sizes = [sum(lengths[i] for i in block) for block in blocks]
    assert packing_efficiency(sizes, 128) == pytest.approx(ours)


def test_packing_reports_its_efficiency(tokenizer):
    columns = {"prompt_column": "q", "response_column": "a", "messages_column": None}
    task = build_task("instruction", tokenizer, columns, max_length=64, packing=True)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rows = datasets.Dataset.from_dict(
        {"q": [" ".join(words[: 1 + i % 8]) for i in range(40)], "a": ["yes"] * 40}
    )
    packed = task.preprocess(rows, "train", TaskContext("t", load_from_cache=False))
    assert sum(sum(p == 0 for p in row["position_ids"]) for row in packed) == 40
    assert 0.8 < task.packing_efficiency["train"] <= 1.0
    assert task.report()["packing_efficiency"] == {"train": task.packing_efficiency["train"]}
    assert "packed blocks filled: train" in task.describe()


# -- the end of turn: one token, where generation stops ------------------------------------
def test_a_split_end_of_turn_marker_becomes_one_special_token(tokenizer):
    # the tiny BPE spells "<|im_end|>" in several pieces: generate() could never stop on it
    assert len(tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]) > 1
    size, plain = len(tokenizer), copy.deepcopy(tokenizer)
    task = build_task("instruction", tokenizer, COLUMNS, 512, chat_template="chatml")
    assert len(tokenizer) == size + 1
    (eot,) = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert eot == size  # the next id: the model's embeddings grow by one row
    ids, labels = task.encode_row({"messages": CHAT[1:3]})
    assert ids.count(eot) == 2 and labels[ids.index(eot, ids.index(eot) + 1)] == eot
    # the plain template ends turns with EOS, already one token: nothing added
    build_task("instruction", plain, COLUMNS, 512, chat_template="plain")
    assert len(plain) == size


def _chat_rows(path, count: int = 40):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say {words[i % 10]}."},
                {"role": "assistant", "content": words[i % 10]},
            ]
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chat_run(tmp_path, tiny_tokenizer_dir, *extra) -> list[str]:
    return [
        "task=instruction",
        "task.chat_template=chatml",
        *tiny_model_overrides(tiny_tokenizer_dir),
        "data=text_files",
        "data.path=json",
        f"data.data_files={_chat_rows(tmp_path / 'chats.jsonl')}",
        "data.messages_column=messages",
        "data.block_size=64",
        "data.batch_size=8",
        "data.validation_split_percentage=20",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.precision=32-true",  # stated: not the host's `auto`
        "task.eval_generations=2",
        "task.eval_max_new_tokens=4",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
        "predict=false",
        f"paths.output_dir={tmp_path / 'run'}",
        *extra,
    ]


class _ForceAt:
    """A logits processor that makes the model write `token` as its `step`-th new token."""

    def __init__(self, prompt_length: int, step: int, token: int):
        self.at, self.token = prompt_length + step - 1, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores[:, :] = -float("inf")
            scores[:, self.token] = 0.0
        return scores


def test_an_exported_chat_model_stops_at_the_end_of_its_turn(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    import lit_ft
    from lit_ft.export import export_checkpoint

    # padded to 64: 512 + <|im_end|> = 513 rows grow to 576 in training, cropped on export
    overrides = _chat_run(tmp_path, tiny_tokenizer_dir, "model.pad_vocab_to_multiple_of=64")
    results = lit_ft.train_from_overrides(overrides)
    from_checkpoint = export_checkpoint(results["last_checkpoint"], tmp_path / "from_ckpt")
    # resuming: the grown vocabulary and the tokenizer's new token are this run's again
    resumed = lit_ft.train_from_overrides([*overrides, "ckpt_path=last", "trainer.max_steps=3"])
    assert resumed["resumed_from"] and resumed["metrics"]["train"]
    for exported in (results["export_dir"], from_checkpoint):
        tokenizer = AutoTokenizer.from_pretrained(exported)
        model = AutoModelForCausalLM.from_pretrained(exported).eval()
        (eot,) = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
        assert eot == 512 and model.get_input_embeddings().num_embeddings == len(tokenizer) == 513
        assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, eot]
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say beta."}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        n = prompt.shape[1]
        for step in (1, 3):  # the model writes <|im_end|> as its 1st or 3rd new token...
            force = LogitsProcessorList([_ForceAt(n, step, eot)])
            out = model.generate(prompt, max_new_tokens=10, do_sample=False, logits_processor=force)
            assert out.shape[1] == n + step and out[0, -1] == eot  # ...and stops right there


# -- rows longer than the block ---------------------------------------------------------------
LONG = " ".join(["the standard library documents every function"] * 6)
SHORT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
TWO_TURNS = [*SHORT, {"role": "user", "content": "More?"}, {"role": "assistant", "content": LONG}]
FIRST_LONG = [{"role": "user", "content": "Tell."}, {"role": "assistant", "content": LONG}]


def _hf_ids(tokenizer, chat) -> list[int]:
    """The chat as transformers' own apply_chat_template tokenizes it (the reference)."""
    return list(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False))


@pytest.mark.parametrize("truncation", ["cut", "drop", "turns"])
def test_rows_over_the_block_are_counted_and_cut_dropped_or_cut_at_turns(tokenizer, truncation):
    chats = [SHORT, TWO_TURNS, FIRST_LONG]
    task = build_task("instruction", tokenizer, COLUMNS, 8, chat_template="chatml")  # adds the eot
    lengths = [len(_hf_ids(tokenizer, c)) for c in chats]
    block = len(_hf_ids(tokenizer, TWO_TURNS[:2])) + 2  # the first turn fits, whole chats not
    assert lengths[0] <= block < min(lengths[1:])
    task = build_task(
        "instruction", tokenizer, COLUMNS, block, chat_template="chatml", truncation=truncation
    )
    rows = datasets.Dataset.from_dict({"messages": chats})
    kept = task.preprocess(rows, "train", TaskContext("t", load_from_cache=False))
    expected = {
        "cut": [_hf_ids(tokenizer, c)[:block] for c in chats],
        "drop": [_hf_ids(tokenizer, SHORT)],
        # the two-turn chat keeps its whole first turn; the long first answer cannot
        "turns": [_hf_ids(tokenizer, SHORT), _hf_ids(tokenizer, TWO_TURNS[:2])],
    }[truncation]
    assert kept["input_ids"] == expected
    left_out = sum(lengths) - sum(len(ids) for ids in expected)
    assert task.over_length["train"] == {
        "rows": 3,
        "over": 2,
        "longest": max(lengths),
        "dropped": 3 - len(expected),
        "tokens": sum(lengths),
        "tokens_left_out": left_out,
    }
    line = task.describe()
    assert f"train: 2 of 3 rows exceed {block} tokens (longest {max(lengths)})" in line
    assert f"data.truncation={truncation} left out {left_out:,} of {sum(lengths)} tokens" in line


def test_truncation_is_checked_with_the_config():
    cfg = compose(["task=instruction", "data.truncation=shorten"])
    with pytest.raises(LitFtError, match="data.truncation='shorten' is unknown"):
        validate_config(cfg)
    cfg = compose(["task=causal_lm", "data.truncation=drop"])
    with pytest.raises(LitFtError, match="applies to task=instruction only"):
        validate_config(cfg)
    validate_config(compose(["task=instruction", "data.truncation=turns"]))
