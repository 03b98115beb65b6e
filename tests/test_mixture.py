"""data=mixture: the draws follow the weights (within sampling error), each epoch's order is a
pure function of (seed, epoch), each source's validation figures are those of a run on that
source alone, bad mixtures are refused with every problem named, and a killed run resumes
bit-identically (tests/test_resume.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch import Callback

import lit_ft
from lit_ft.config.compose import compose
from lit_ft.data.mixture import SOURCE_KEY, MixturePlan
from lit_ft.errors import ConfigError
from lit_ft.validate import validate_config


def _plan(mode: str, size=None) -> MixturePlan:
    return MixturePlan(("a", "b"), (1000, 5000), (0.8, 0.2), mode, size)


def _shares(plan: MixturePlan, seed: int = 0) -> tuple[list[int], list[float]]:
    order = plan.order(torch.Generator().manual_seed(seed))
    return order, plan.shares(order)


def test_without_replacement_each_source_gets_its_share_exactly():
    plan = _plan("without_replacement")
    assert plan.quotas() == [4800, 1200] and plan.epoch_size == 6000
    order, shares = _shares(plan)
    assert shares == [0.8, 0.2]
    # the first source (1,000 rows) is passed through 4.8 times: each row 4 or 5 times
    counts = torch.bincount(torch.tensor([i for i in order if i < 1000]), minlength=1000)
    assert set(counts.tolist()) == {4, 5}
    # the second (5,000 rows, 1,200 wanted): no row twice
    second = [i for i in order if i >= 1000]
    assert len(second) == len(set(second)) == 1200
    three = MixturePlan(("a", "b", "c"), (10, 10, 10), (1, 1, 1), "without_replacement", 10)
    assert three.quotas() == [4, 3, 3]


def test_with_replacement_draws_by_weight_within_sampling_error():
    order, shares = _shares(_plan("with_replacement", size=20_000))
    sigma = math.sqrt(0.8 * 0.2 / 20_000)  # 0.0028
    assert abs(shares[0] - 0.8) < 4 * sigma
    assert all(0 <= i < 6000 for i in order)


def test_the_order_is_a_pure_function_of_seed_and_epoch():
    from lit_ft.data.sampler import ResumableRandomSampler

    plan = _plan("with_replacement", size=500)
    sampler = ResumableRandomSampler(500, seed=42, mixture=plan)
    again = ResumableRandomSampler(500, seed=42, mixture=plan)
    assert sampler.order(3) == again.order(3) and sampler.order(3) != sampler.order(4)


def _files(tmp_path):
    """Source a: JSON lines of text about apples; source b: CSV rows whose text the template
    builds from two columns (about boats)."""
    words = ["apple", "pear", "plum", "fig"]
    a = tmp_path / "a.jsonl"
    a.write_text(
        "".join(json.dumps({"text": f"{words[i % 4]} {i} " * 12}) + "\n" for i in range(200))
    )
    b = tmp_path / "b.csv"
    b.write_text("kind,size\n" + "".join(f"boat{i},{i * 7}\n" for i in range(200)))
    return a, b


def _mixture(a, b, *extra) -> list[str]:
    sources = (
        f"[{{label: apples, path: json, data_files: '{a}', weight: 0.8}},"
        f" {{label: boats, path: csv, data_files: '{b}', weight: 0.2,"
        " template: {text_column: 'the {kind} is {size} feet long and the {kind} is {size}'}}]"
    )
    return ["data=mixture", f"data.sources={sources}", "data.block_size=32", *extra]


class SourcesSeen(Callback):
    def __init__(self):
        self.sources: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sources += batch[SOURCE_KEY].tolist()


def test_a_run_trains_on_the_shares_and_validates_each_source_as_alone(tmp_path):
    a, b = _files(tmp_path)
    # the bundled (pretrained) model: both runs score the very same weights
    common = ["trainer.precision=32-true", "trainer.enable_progress_bar=false",
              "callbacks.generations.num_prompts=0", "data.batch_size=8",
              "data.validation_split_percentage=10"]  # fmt: skip
    seen = SourcesSeen()
    mixed = lit_ft.FineTuner(
        [*common, *_mixture(a, b), "trainer.max_steps=40", f"paths.output_dir={tmp_path / 'mix'}"],
        callbacks=[seen],
    ).train()
    share = seen.sources.count(0) / len(seen.sources)  # 40 steps x 8 = 320 draws
    assert len(seen.sources) == 320 and abs(share - 0.8) < 4 * math.sqrt(0.16 / 320)
    before = mixed["metrics"]["before"]
    assert {"val/apples/loss", "val/boats/loss", "val/apples/ppl"} <= set(before)
    # the apples' figures are those of a run on the apples alone (same split, same model)
    alone = lit_ft.train_from_overrides(
        [*common, "data=text_files", "data.path=json", f"data.data_files={a}",
         "data.block_size=32", "data.add_eos=true",  # as data=mixture's
         "trainer.max_steps=1", f"paths.output_dir={tmp_path / 'alone'}"]
    )  # fmt: skip
    assert before["val/apples/loss"] == pytest.approx(
        alone["metrics"]["before"]["val/loss"], rel=1e-6
    )
    # and the mixture's figure weighs the two sources by their tokens
    assert min(before["val/apples/loss"], before["val/boats/loss"]) <= before["val/loss"]
    assert before["val/loss"] <= max(before["val/apples/loss"], before["val/boats/loss"])


def test_bad_mixtures_are_refused_with_every_problem(tmp_path):
    a, b = _files(tmp_path)
    sources = (
        f"[{{label: x, path: json, data_files: '{a}', weight: 0}},"
        f" {{label: x, path: csv, data_files: '{b}', weight: -1, colour: red}}]"
    )
    cfg = compose(["data=mixture", f"data.sources={sources}", "data.mixture_mode=sometimes",
                   "trainer.max_steps=4",
                   f"paths.output_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert "data.sources[1].weight must be a number >= 0, got -1" in text
    assert "the weights of data.sources sum to 0" in text
    assert "labels repeat: ['x']" in text and "unknown keys ['colour']" in text
    assert "data.mixture_mode='sometimes' is unknown" in text


def test_a_source_without_the_tasks_column_is_named(tmp_path, tiny_overrides):
    from lit_ft.errors import LitFtError

    a, b = _files(tmp_path)
    common = [o for o in tiny_overrides if not o.startswith(("data=", "data.data_files"))]
    sources = (
        f"[{{label: apples, path: json, data_files: '{a}', weight: 1}},"
        f" {{label: boats, path: csv, data_files: '{b}', weight: 1}}]"
    )
    with pytest.raises(LitFtError, match=r"data.sources 'boats' \(csv\) has no column for "
                       r"text_column='text'; columns: kind, size"):  # fmt: skip
        lit_ft.train_from_overrides([*common, "data=mixture", f"data.sources={sources}",
                                     f"paths.output_dir={tmp_path / 'run'}"])  # fmt: skip


def test_a_streamed_mixture_validates_each_source_and_resumes_exactly(
    tiny_overrides, reference_text, tmp_path
):
    """data.streaming=true with data=mixture: the sources' streams interleaved by weight
    (datasets' interleave, a pass ending when a source runs out), each source validated on its
    own held-out rows, and a run stopped at step 6 resumes to the uninterrupted run's losses."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    paragraphs = [p for p in reference_text[:12_000].split("\n\n") if p.strip()]
    a.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs[::2]))
    b.write_text("".join(json.dumps({"body": p}) + "\n" for p in paragraphs[1::2]))
    sources = (
        f"[{{label: a, path: json, data_files: '{a}', weight: 0.75}},"
        f" {{label: b, path: json, data_files: '{b}', weight: 0.25,"
        " columns: {text_column: body}}]"
    )

    def args(run: str, log: str, *extra: str) -> list[str]:
        return [
            *(o for o in tiny_overrides if not o.startswith(("data=", "data.data", "paths."))),
            "data=mixture", f"data.sources={sources}", "data.block_size=32",
            f"paths.output_dir={tmp_path / run}", "data.streaming=true",
            "data.streaming_validation_rows=5", "trainer.max_epochs=-1",
            "trainer.val_check_interval=6", "trainer.max_steps=12",
            "callbacks.resumable_checkpoint.every_n_train_steps=4", "export=false",
            "evaluate_before=false",
            "+callbacks.loss_log="
            f"{{_target_: helpers.callbacks.LossLog, path: '{tmp_path / log}'}}",
            *extra,
        ]  # fmt: skip

    full = lit_ft.train_from_overrides(args("full", "full.jsonl"))
    assert {"val/a/loss", "val/b/loss", "val/loss"} <= set(full["metrics"]["after"])
    kill = "+callbacks.kill={_target_: helpers.callbacks.KillAt, step: 6, sig: SIGTERM}"
    with pytest.raises(SystemExit):
        lit_ft.train_from_overrides(args("cut", "cut.jsonl", kill))
    lit_ft.train_from_overrides(args("cut", "resumed.jsonl", "ckpt_path=last"))

    def losses(name):
        lines = (tmp_path / name).read_text().splitlines()
        return [json.loads(line) for line in lines]

    assert losses("resumed.jsonl") == losses("full.jsonl")[6:]


def test_a_classifier_mixes_a_json_and_a_csv_source(tmp_path):
    """Labels from a JSON source (large strings) and a CSV one (strings) share one label set;
    each source's accuracy is reported, and predictions.jsonl rows are the sources' own rows."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.csv"
    a.write_text("".join(json.dumps({"text": f"good thing {i}", "label": "pos" if i % 2 else "neg"})
                         + "\n" for i in range(60)))  # fmt: skip
    b.write_text("sentence,y\n" + "".join(f"bad item {i},{'pos' if i % 3 else 'neg'}\n"
                                          for i in range(60)))  # fmt: skip
    sources = (
        f"[{{label: a, path: json, data_files: '{a}', weight: 0.5}},"
        f" {{label: b, path: csv, data_files: '{b}', weight: 0.5,"
        " columns: {text_column: sentence, label_column: y}}]"
    )
    results = lit_ft.train_from_overrides(
        ["task=sequence_classification", "data=mixture", f"data.sources={sources}",
         "data.block_size=32", "trainer.max_steps=2", "trainer.precision=32-true",
         "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert {"val/a/accuracy", "val/b/accuracy", "val/accuracy"} <= set(results["metrics"]["after"])
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    for line in map(json.loads, lines):
        number = int(line["input"].split()[-1])
        kind = line["input"].split()[0]
        want = ("pos" if number % 2 else "neg") if kind == "good" else (
            "pos" if number % 3 else "neg")  # fmt: skip
        assert line["label"] == want, line
