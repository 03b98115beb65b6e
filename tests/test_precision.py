"""`trainer.precision=auto` picks bf16 only where the hardware computes it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_ft.model import precision


def test_explicit_precision_is_kept():
    assert precision.resolve_precision("16-mixed", "gpu") == ("16-mixed", "as configured")


def test_cpu_without_bf16_units_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    chosen, why = precision.resolve_precision("auto", "auto")
    assert chosen == "32-true" and "emulated" in why


def test_cpu_with_amx_uses_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed", "the CPU has amx_bf16")


def test_gpu_choice_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve_precision("auto", "auto")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "gpu")[0] == "32-true"
    # accelerator=cpu takes the CPU path even beside a GPU: the CPU's flags decide, both ways
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert precision.resolve_precision("auto", "cpu")[0] == "32-true"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed", "the CPU has avx512_bf16")


# The start of a real /proc/cpuinfo (two processors; the flags line is the same for each).
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_flags_are_read_from_the_flags_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    flags = precision.cpu_flags(cpuinfo)
    assert flags == {"fpu", "vme", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    # no flags line (an ARM kernel says "Features"), or no file at all: none
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert precision.cpu_flags(cpuinfo) == set()
    assert precision.cpu_flags(tmp_path / "missing") == set()
    # and what auto makes of those flags, the file being what the machine has
    cpuinfo.write_text(CPUINFO)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    read = precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda: read(cpuinfo))
    chosen = precision.resolve_precision("auto", "auto")
    assert chosen == ("bf16-mixed", "the CPU has amx_bf16, avx512_bf16")


# -- the precision matrix: every combination trains, saves, reloads, exports and generates ----
MATRIX = [
    (precision, fused, clip, accumulate)
    for precision in ("32-true", "bf16-mixed", "bf16-true")
    for fused in (True, False)
    for clip in (1.0, None)
    for accumulate in (1, 3)
]
WEIGHT_DTYPE = {"32-true": torch.float32, "bf16-mixed": torch.float32, "bf16-true": torch.bfloat16}


# The fast tier runs one combination per precision, between them every setting once; the
# other 21 of the 3 x 2 x 2 x 2 = 24 run in the full suite.
FAST = {("32-true", False, None, 1), ("bf16-mixed", True, 1.0, 3), ("bf16-true", False, 1.0, 3)}


@pytest.mark.parametrize(
    "precision_flag,fused,clip,accumulate",
    [pytest.param(*combo, marks=() if combo in FAST else pytest.mark.slow) for combo in MATRIX],
    ids=[f"{p}-fused{f}-clip{c}-acc{a}" for p, f, c, a in MATRIX],
)
def test_precision_matrix_trains_saves_exports_and_generates(
    precision_flag, fused, clip, accumulate, tiny_overrides, tmp_path
):
    """Both outcomes of `auto` (and bf16-true) on the host at hand: bf16 on a CPU without bf16
    units is emulated, so the model is tiny and the run is a few steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lit_ft

    steps = 6
    results = lit_ft.train_from_overrides(
        [
            *tiny_overrides,
            f"trainer.precision={precision_flag}",
            f"optimizer.fused={str(fused).lower()}",
            f"trainer.gradient_clip_val={'null' if clip is None else clip}",
            f"trainer.accumulate_grad_batches={accumulate}",
            f"trainer.max_steps={steps}",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "evaluate_before=false",
            "callbacks.generations.num_prompts=1",
            "callbacks.generations.max_new_tokens=4",
        ]
    )
    train = results["metrics"]["train"]
    assert train["steps"] == steps
    first, last = train["loss_first_step"], train["loss_last_10_steps"]
    assert math.isfinite(first) and math.isfinite(last) and last < first, train
    assert math.isfinite(results["metrics"]["after"]["val/loss"])

    checkpoint = torch.load(results["last_checkpoint"], weights_only=True)  # saved, reloads
    assert checkpoint["global_step"] == steps
    export = Path(results["export_dir"])
    model = AutoModelForCausalLM.from_pretrained(export)
    weights = dict(model.named_parameters())
    assert {p.dtype for p in weights.values()} == {WEIGHT_DTYPE[precision_flag]}
    # the export holds what the checkpoint holds: fp32 master weights after bf16-mixed
    name = "transformer.h.0.mlp.c_fc.weight"
    assert torch.equal(checkpoint["state_dict"][f"model.{name}"].cpu(), weights[name].detach())
    tokenizer = AutoTokenizer.from_pretrained(export)
    prompt = tokenizer("The for statement", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4


# -- 16-mixed: unscaled before the hooks and clipping, overflowing steps skipped -------------
def _fp16_trainer(callbacks, steps: int, clip: float | None):
    import lightning as L

    from lit_ft.training.amp import ClippingMixedPrecision

    return L.Trainer(
        accelerator="cpu",
        plugins=[ClippingMixedPrecision("16-mixed", "cpu")],  # fp16 autocast runs on CPU too
        max_steps=steps,
        gradient_clip_val=clip,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


class _Regression:
    @staticmethod
    def module(grad_hook=None):
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Linear(8, 1)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return torch.nn.functional.mse_loss(self.net(x).float(), y)

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)

            def train_dataloader(self):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(64, 8, generator=g)
                data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
                return torch.utils.data.DataLoader(data, batch_size=8)

        return Module()


def test_16_mixed_unscales_for_fused_adamw_before_hooks_and_clipping():
    from lightning.pytorch import Callback

    norms = []

    class Record(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for p in pl_module.parameters()]
            norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))

    module = _Regression.module()
    before = module.net.weight.detach().clone()
    trainer = _fp16_trainer([Record()], steps=6, clip=1.0)
    trainer.fit(module)
    # The first steps overflow at GradScaler's initial scale of 65,536 and are skipped (the
    # scale halves); after them the hook sees true gradients (a loss of ~8: norms of ~3-10),
    # not gradients x 16,384 or more.
    finite = [n for n in norms if math.isfinite(n)]
    assert len(finite) >= 2 and all(0 < n < 1e3 for n in finite), norms
    # clipped to norm 1 and AdamW's step is lr-sized: the weights moved, by at most ~lr each
    moved = (module.net.weight.detach() - before).abs().max()
    assert 0 < moved <= 6 * 1e-2 + 1e-6


def test_16_mixed_skips_a_step_whose_gradients_overflow():
    from lightning.pytorch import Callback

    class Overflow(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.weights = pl_module.net.weight.detach().clone()
            self.scale = trainer.precision_plugin.scaler.get_scale()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pl_module.net.weight.grad.fill_(float("inf"))

    overflow = Overflow()
    module = _Regression.module()
    trainer = _fp16_trainer([overflow], steps=1, clip=1.0)
    trainer.fit(module)
    assert torch.equal(module.net.weight.detach(), overflow.weights)  # the step was skipped
    assert trainer.precision_plugin.scaler.get_scale() == overflow.scale / 2


def test_mixed_precision_comes_as_lit_ft_plugin_except_under_fsdp_and_deepspeed():
    from lit_ft.training.amp import ClippingMixedPrecision, precision_plugins

    (plugin,) = precision_plugins("bf16-mixed", "cpu", "auto")
    assert isinstance(plugin, ClippingMixedPrecision) and plugin.device == "cpu"
    assert precision_plugins("32-true", "cpu", "auto") == []
    assert precision_plugins("bf16-true", "cpu", "auto") == []
    fsdp = {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}
    assert precision_plugins("bf16-mixed", "gpu", fsdp) == []
    assert precision_plugins("16-mixed", "gpu", "deepspeed_stage_2") == []
    # FSDP2 is Lightning's ModelParallelStrategy, whose plain MixedPrecision refuses clipping
    # with the fused AdamW: trainer=fsdp2 stopped at step 1 wherever auto picked bf16-mixed.
    fsdp2 = {"_target_": "lit_ft.model.fsdp2.FullyShardedStrategy"}
    (plugin,) = precision_plugins("bf16-mixed", "cpu", fsdp2)
    assert isinstance(plugin, ClippingMixedPrecision)
