"""The benchmarks that need no extra package run and print their table."""

from __future__ import annotations

import sys

from benchmarks import toy_training_step


def test_toy_training_step_times_every_banana_recipe(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["toy_training_step", "--repeats", "1", "--steps", "1"])
    toy_training_step.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `configs/")]
    assert [row.split("`")[1] for row in rows] == [f"configs/{r}.yaml" for r in toy_training_step.RECIPES]
    for row in rows:
        ms = float(row.split("|")[4])
        assert 0 < ms < 10_000
