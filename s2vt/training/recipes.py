"""Named training recipes: starting points for ``s2vt train --recipe NAME``, under ``--config`` and the
flags (each given option overrides the recipe's).

``paper`` is TrainConfig's defaults: the paper's sizes (500-d embedding, two 1000-unit LSTMs, batches
of 64, 30 epochs), made for MSVD's 1,200 training videos and about 48,000 captions; on a few dozen
clips they take only a few dozen optimiser steps. ``small`` is the demo's CPU recipe (a 128-d
embedding, 256-unit LSTMs, batches of 32, a 10x larger learning rate, 20 epochs), which trains on a
few hundred clips in minutes on a CPU.
"""
from __future__ import annotations

import math
from typing import Optional

from s2vt.runtime.errors import ConfigError

RECIPES = {
    "paper": {},
    "small": {"model": {"embed": 128, "hidden": 256, "dropout": 0.3, "max_frames": 80}, "epochs": 20,
              "batch_size": 32, "optim": {"lr": 2e-3}, "validation": {"val_every": 5}, "decoding": {"beam": 5}},
}
FEW_STEPS = 300  # fewer optimiser steps than this rarely train the paper's model


def recipe(name: str) -> dict:
    """The TrainConfig options of recipe ``name`` (nested dicts for its groups, model and decoding), a fresh copy."""
    if name not in RECIPES:
        raise ConfigError(f"--recipe {name!r} is unknown; choose one of {', '.join(RECIPES)}")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in RECIPES[name].items()}


def few_steps_hint(captions: int, batch_size: int, epochs: int, recipe_name: Optional[str]) -> Optional[str]:
    """A line for runs that will take fewer than ``FEW_STEPS`` optimiser steps, naming the recipe to try."""
    steps = epochs * math.ceil(captions / batch_size)
    if steps >= FEW_STEPS:
        return None
    tip = ("more --epochs, or --recipe small (a smaller model, batches of 32, a larger learning rate)"
           if recipe_name != "small" else "more --epochs, or a smaller --batch-size")
    return (f"this run takes {steps} optimiser steps ({captions} training captions, batches of {batch_size}, "
            f"{epochs} epochs): fewer than {FEW_STEPS} rarely train a captioner; try {tip}")
