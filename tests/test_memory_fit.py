"""model.gradient_checkpointing=auto (lit_ft/training/memory_estimate.py): off while the
pre-flight estimate fits the memory free for the run, on (and said, with what to change if even
that will not fit) when it does not. The free memory is set by the test, never read from the
host, so the outcome is the same on every machine."""

from __future__ import annotations

from lit_ft.training.memory_estimate import MemoryEstimate, checkpointing_choice, free_bytes

GB = 2**30


def test_auto_turns_checkpointing_on_only_when_the_run_would_not_fit():
    without, with_it = MemoryEstimate({"activations": 9 * GB}), MemoryEstimate({"x": 3 * GB})
    on, why = checkpointing_choice("auto", without, with_it, free=10 * GB)
    assert on and why.startswith("auto: on, the estimated 9.0 GB without it passes 80% of")
    assert "may not fit" not in why
    off, why = checkpointing_choice("auto", with_it, with_it, free=10 * GB)
    assert not off and why.startswith("auto: off, the estimated 3.0 GB fits")
    on, why = checkpointing_choice("auto", without, MemoryEstimate({"x": 9 * GB}), free=10 * GB)
    assert on and "may not fit: lower data.batch_size" in why
    assert checkpointing_choice("auto", without, with_it, free=None) == (
        False,
        "auto: the free memory is unknown here, so off",
    )
    assert checkpointing_choice(True, with_it, with_it, free=None) == (
        True,
        "model.gradient_checkpointing=true",
    )
    assert not checkpointing_choice(False, without, with_it, 1)[0]


def test_the_free_memory_of_a_cpu_host_is_split_between_its_processes():
    one, two = free_bytes(False, 1), free_bytes(False, 2)
    assert one is None or (one > 0 and abs(two - one // 2) < one // 10)


def test_a_run_that_would_not_fit_trains_with_checkpointing(tiny_overrides, monkeypatch, capsys):
    import lit_ft
    import lit_ft.training.memory_plan as plan

    seen = []
    monkeypatch.setattr(plan, "free_bytes", lambda *a: 1)  # one byte free
    monkeypatch.setattr(
        plan, "enable_checkpointing", lambda model: seen.append(model) or real(model)
    )
    from lit_ft.model.peft import enable_checkpointing as real

    results = lit_ft.train_from_overrides([*tiny_overrides, "trainer.max_steps=2"])
    out = capsys.readouterr().out
    assert "gradient checkpointing auto: on, the estimated" in out and "may not fit" in out
    # transformers renamed the flag (is_gradient_checkpointing -> is_activation_checkpointing)
    # around 5.2x; users' installs may hold either name.
    model = seen[0] if seen else None
    assert model is not None and (
        getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    )
    assert results["memory"]["gradient_checkpointing"].startswith("auto: on")
    assert results["metrics"]["train"]["steps"] == 2
