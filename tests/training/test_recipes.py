"""Named training recipes: what --recipe sets, what overrides it, and the note on runs too short to train."""
import json

import pytest

from s2vt.cli.app import build_parser
from s2vt.cli.train import train_config
from s2vt.training.recipes import FEW_STEPS, RECIPES, few_steps_hint

REQUIRED = ["--dataset", "synthetic", "--annotations", "a", "--features", "f.h5"]


def config(*argv):
    return train_config(build_parser().parse_args(["train", *REQUIRED, *argv]))


def test_small_recipe_sets_the_demos_sizes_and_flags_override_it(tmp_path):
    paper, small = config(), config("--recipe", "small")
    assert (paper.recipe, paper.model.embed, paper.model.hidden, paper.batch_size, paper.epochs) == ("paper", 500, 1000, 64, 30)
    assert (small.recipe, small.model.embed, small.model.hidden, small.model.dropout) == ("small", 128, 256, 0.3)
    assert (small.batch_size, small.epochs, small.optim.lr, small.validation.val_every, small.decoding.beam) == (32, 20, 2e-3, 5, 5)
    mine = config("--recipe", "small", "--hidden", "64", "--epochs", "3")
    assert (mine.model.hidden, mine.model.embed, mine.epochs, mine.batch_size) == (64, 128, 3, 32)
    saved = tmp_path / "config.json"  # a run's config.json records its recipe: --config starts from it again
    saved.write_text(json.dumps({"recipe": "small", "epochs": 7, "model": {"embed": 64}}))
    again = config("--config", str(saved))
    assert (again.epochs, again.model.embed, again.model.hidden, again.batch_size) == (7, 64, 256, 32)


def test_an_unknown_recipe_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as e:
        config("--recipe", "huge")
    assert e.value.code == 2 and "small" in capsys.readouterr().err
    assert set(RECIPES) == {"paper", "small"}


def test_short_runs_get_a_note_naming_the_recipe_to_try():
    # 20 clips x 4 captions = 80 captions: the paper's batches of 64 over 30 epochs are 60 steps
    note = few_steps_hint(80, 64, 30, "paper")
    assert note.startswith("this run takes 60 optimiser steps") and "--recipe small" in note
    assert "--recipe small" not in few_steps_hint(80, 32, 20, "small")  # already small: more epochs instead
    assert few_steps_hint(48_000, 64, 30, "paper") is None
    assert few_steps_hint(FEW_STEPS, 1, 1, "paper") is None and few_steps_hint(FEW_STEPS - 1, 1, 1, "paper")
