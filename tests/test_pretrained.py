"""Shipped trained models: recipes, export, checked loading, and where users see them (CLI, two_regimes).

The fast tests use the shipped ``dit-digits`` and a fake finished run (a random-initialised
state saved as a checkpoint: no training step is compiled); the command-line and experiment runs
are marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax import cli, reproduce
from pifs_jax.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pifs_jax.errors import ArgumentError
from pifs_jax.models.pretrained import (
    CARD_FIELDS,
    PRETRAINED_DIR,
    SIZE_BUDGET_BYTES,
    export_pretrained,
    file_sha256,
    list_pretrained,
    pretrained,
    read_card,
)
from pifs_jax.models.training import TrainConfig, initial_train_state, load_run, model_for_config
from pifs_jax.models.training.curve import score_model
from pifs_jax.models.training.recipes import RECIPES, Recipe, recipe, recipe_fingerprint

SHIPPED = "dit-digits"


@pytest.fixture(scope="module")
def tiny_recipe() -> Recipe:
    config = TrainConfig(
        model="dit",
        size=None,
        architecture=dict(
            patch_size=2, hidden=8, depth=1, num_heads=2, mlp_ratio=2, pos_embedding="learned", decoder_features=0
        ),
        data="digits",
        num_train=32,
        num_test=8,
        steps=2,
        batch_size=4,
        num_samples=0,
    ).resolved()
    return Recipe("tiny", "a test recipe", config)


def _fake_run(folder: Path, config: TrainConfig, *, step: int) -> Path:
    """A run folder as train leaves it (config.json, checkpoint), with random weights at ``step``."""
    folder.mkdir(parents=True, exist_ok=True)
    image_shape = config.image_shape
    assert image_shape is not None
    _, init_fn = model_for_config(config, image_shape)
    _, state = initial_train_state(config, init_fn)
    noisy = jax.tree_util.tree_map(lambda p: p + 0.01 * jnp.ones_like(p), state.ema_params)  # EMA != params
    state = state._replace(step=jnp.asarray(step, jnp.int32), ema_params=noisy)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    save_checkpoint(folder / CHECKPOINT_NAME, state, config=config.identity())
    (folder / "metrics.jsonl").write_text(
        json.dumps({"step": step, "loss": 1.0, "images_per_s": 10.0, "time_s": 3.5}) + "\n"
    )
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_recipe) -> tuple[Path, Path]:
    """(run folder, export folder) of the tiny recipe."""
    run = _fake_run(tmp_path_factory.mktemp("run"), tiny_recipe.config, step=tiny_recipe.config.steps)
    folder = tmp_path_factory.mktemp("shipped")
    export_pretrained(
        run, "tiny", folder=folder, recipes={"tiny": tiny_recipe}, card_extra={"quality": {"score": 1.5}, "notes": "x"}
    )
    return run, folder


@pytest.fixture
def shipped_copy(exported, tmp_path) -> Path:
    """A copy of the tiny export folder that a test may damage."""
    copy = tmp_path / "shipped"
    shutil.copytree(exported[1], copy)
    return copy


# ----------------------------------------------------------------------------- recipes


def test_recipes_are_complete_frozen_configs():
    assert {"dit-photos16", "unet-photos16", "dit-digits", "dit-photos32"} <= set(RECIPES)
    assert recipe("dit-photos32").patch_size == 8 and recipe("dit-photos32").data == "photos32"
    for name, entry in RECIPES.items():
        assert entry.name == name and entry.description
        assert entry.config.model_spec() is not None  # field by field, or a preset (fingerprinted resolved)
        assert entry.config == entry.config.resolved()
    with pytest.raises(TypeError):
        RECIPES["new"] = RECIPES["dit-digits"]  # type: ignore[index]
    with pytest.raises(ArgumentError, match="dit-photos16"):
        recipe("nope")


def test_fingerprint_is_the_identity_and_ignores_run_control():
    config = recipe("dit-digits")
    assert recipe_fingerprint(dataclasses.replace(config, checkpoint_every=7, num_samples=1)) == recipe_fingerprint(
        config
    )
    assert recipe_fingerprint(dataclasses.replace(config, lr=config.lr * 2)) != recipe_fingerprint(config)
    reread = TrainConfig(**json.loads(json.dumps(config.to_dict())))  # tuples -> lists, as config.json
    assert recipe_fingerprint(reread) == recipe_fingerprint(config)


def test_fingerprint_sees_an_edited_preset(monkeypatch):
    """A recipe naming a preset (dit-photos16: size="quick") changes its fingerprint with the preset."""
    from pifs_jax.models.dit import DiTSpec

    config = recipe("dit-photos16")
    assert config.size == "quick"
    before = recipe_fingerprint(config)
    edited = {**DiTSpec.PRESETS["quick"], "hidden": 32}
    monkeypatch.setattr(DiTSpec, "PRESETS", {**DiTSpec.PRESETS, "quick": edited})
    assert recipe_fingerprint(config) != before


# ----------------------------------------------------------------------------- the shipped models


def test_list_pretrained_names_the_shipped_models():
    shipped = list_pretrained()
    assert SHIPPED in shipped and isinstance(shipped[SHIPPED], str) and shipped[SHIPPED]


def test_every_shipped_model_matches_its_recipe_and_fits_the_budget():
    """Fails when a recipe is edited without retraining and exporting its model again."""
    total = 0
    for name in list_pretrained():
        card = read_card(name)
        assert set(CARD_FIELDS) <= set(card)
        assert card["recipe"] == name
        assert card["fingerprint"] == recipe_fingerprint(recipe(name)), (
            f"the shipped {name!r} was trained with another configuration than the recipe {name!r}: "
            f"retrain it (pifs-jax train --recipe {name}) and export_pretrained the run"
        )
        assert card["fingerprint"] == recipe_fingerprint(TrainConfig(**card["config"]))
        weights = PRETRAINED_DIR / card["weights"]["file"]
        assert file_sha256(weights) == card["weights"]["sha256"]
        assert card["training"]["steps"] == card["config"]["steps"]
        assert card["environment"]["versions"]["jax"]
        total += weights.stat().st_size
    assert total <= SIZE_BUDGET_BYTES


@pytest.mark.slow
def test_every_shipped_model_still_meets_its_recorded_quality():
    """The card's ``check`` score (held-out noise seeds, ``num_samples`` samples of 50-step DDIM) recomputed.

    Sampling is float32 on the CPU; the same program on another machine may differ in the last
    bits, which moves a sample value across the 1.05 bound rarely: the fraction outside may differ
    by two of its ``num_samples * n`` values, the distances by 1e-3 relative. The check uses 64
    samples (the held-out quality on the card uses 1024): it guards the weights and the sampling
    path, at a few seconds per model. A model without a check score (none recorded) is skipped.
    """
    checked = 0
    for name in list_pretrained():
        card = read_card(name)
        check = card.get("check")
        if not check:
            continue
        model = pretrained(name)
        train, test = model.load_data()
        again = score_model(
            model.module, model.params, model.config, train_images=train, test_images=test,
            num_samples=check["num_samples"],
        )  # fmt: skip
        two_values = 2.5 / (check["num_samples"] * int(np.prod(model.image_shape)))
        assert again["fraction_outside"] == pytest.approx(check["fraction_outside"], abs=two_values), name
        for key in ("fd_patches", "fd_patches_straddling", "memorisation_ratio"):
            assert again[key] == pytest.approx(check[key], rel=1e-3), (name, key)
        checked += 1
    assert checked >= 1


def test_loading_is_fast_and_complete():
    start = time.perf_counter()
    model = pretrained(SHIPPED)
    assert time.perf_counter() - start < 5.0
    assert model.name == SHIPPED and model.image_shape == (8, 8, 1)
    assert model.data["name"] == "digits" and model.data["num_train"] == model.config.num_train
    assert model.spec == recipe(SHIPPED).model_spec()
    assert model.sampling_grid(10)[0] == 0 and model.sampling_grid(10)[-1] == model.config.T
    assert isinstance(model.eps_fn, jax.tree_util.Partial)
    x = jnp.zeros(model.image_shape)
    assert model.eps_fn(x, 500).shape == model.image_shape


# ----------------------------------------------------------------------------- export and checks


def test_exported_eps_fn_equals_the_runs(exported):
    run_dir, folder = exported
    model = pretrained("tiny", folder=folder)
    run = load_run(run_dir)
    x = jax.random.normal(jax.random.PRNGKey(0), model.image_shape)
    np.testing.assert_array_equal(np.asarray(model.eps_fn(x, 321)), np.asarray(run.eps_fn(x, 321)))
    card = model.card
    assert card["quality"] == {"score": 1.5} and card["notes"] == "x"
    assert card["training"]["wall_seconds"] == 3.5 and card["training"]["steps"] == 2
    assert card["weights"]["sha256"] == file_sha256(folder / "tiny.safetensors")
    assert list_pretrained(folder) == {"tiny": "a test recipe"}


def test_a_changed_weight_file_is_refused_by_name(shipped_copy):
    copy = shipped_copy
    weights = copy / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArgumentError, match=r"tiny\.safetensors.*changed or corrupted") as info:
        pretrained("tiny", folder=copy)
    assert info.value.argument == "name"


def test_a_missing_weight_file_or_model_is_refused_by_name(shipped_copy):
    copy = shipped_copy
    (copy / "tiny.safetensors").unlink()
    with pytest.raises(ArgumentError, match=r"tiny\.safetensors.*missing"):
        pretrained("tiny", folder=copy)
    with pytest.raises(ArgumentError, match=r"no shipped model .other.*shipped: tiny"):
        pretrained("other", folder=copy)


def test_non_finite_weights_are_refused_even_with_a_matching_sha256(shipped_copy):
    """A card re-exported over NaN weights (its sha256 matches) is refused naming the tensor."""
    from safetensors.numpy import load_file, save_file

    copy = shipped_copy
    weights = copy / "tiny.safetensors"
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].copy()
    tensors[key].reshape(-1)[0] = np.nan
    save_file(tensors, str(weights))
    card_file = copy / "tiny.json"
    card = json.loads(card_file.read_text())
    card["weights"]["sha256"] = file_sha256(weights)
    card_file.write_text(json.dumps(card))
    with pytest.raises(
        ArgumentError, match=rf"^name: tensor '{key}' of '.*tiny\.safetensors' holds 1 NaN / inf value\(s\)"
    ):
        pretrained("tiny", folder=copy)


def test_a_card_that_is_a_list_or_nested_too_deeply_is_refused(shipped_copy):
    copy = shipped_copy
    card_file = copy / "tiny.json"
    card_file.write_text("[" * 200_000 + "]" * 200_000)  # was a RecursionError traceback
    assert list_pretrained(copy) == {}  # not a card: skipped
    with pytest.raises(ArgumentError, match=r"^name: '.*tiny\.json' is nested too deeply to be a model card"):
        read_card("tiny", copy)
    card_file.write_text("[1, 2]")
    with pytest.raises(ArgumentError, match=r"^name: '.*tiny\.json' must hold a JSON object \(a model card\)"):
        pretrained("tiny", folder=copy)


def test_export_refuses_other_configs_unfinished_runs_and_protected_keys(exported, tiny_recipe, tmp_path):
    run_dir, _ = exported
    other = Recipe("tiny", "", dataclasses.replace(tiny_recipe.config, lr=0.5))
    with pytest.raises(ArgumentError, match=r"not trained with the recipe .tiny.: lr = 0\.5 in the recipe"):
        export_pretrained(run_dir, "tiny", folder=tmp_path, recipes={"tiny": other})
    with pytest.raises(ArgumentError, match="expected a recipe name"):
        export_pretrained(run_dir, "nope", folder=tmp_path, recipes={"tiny": tiny_recipe})
    with pytest.raises(ArgumentError, match="weights"):
        export_pretrained(run_dir, "tiny", folder=tmp_path, recipes={"tiny": tiny_recipe}, card_extra={"weights": 1})
    unfinished = _fake_run(tmp_path / "unfinished", tiny_recipe.config, step=1)
    with pytest.raises(ArgumentError, match="not finished: its checkpoint is at step 1 of 2"):
        export_pretrained(unfinished, "tiny", folder=tmp_path, recipes={"tiny": tiny_recipe})
    assert not list(tmp_path.glob("*.safetensors"))


# ----------------------------------------------------------------------------- command line


def test_train_recipe_refuses_options_that_change_it(tmp_path, capsys):
    for extra in (["--steps", "3"], ["--set", "lr=0.1"], ["--model", "unet"], ["--preset", "full"]):
        assert cli.main(["train", "--recipe", SHIPPED, *extra, "--out", str(tmp_path / "r")]) == 2
        assert "not with --recipe" in capsys.readouterr().err
    assert cli.main(["train", "--data", "digits"]) == 2
    assert "argument --out: required" in capsys.readouterr().err


def test_sample_and_analyze_refuse_an_unknown_model(tmp_path, capsys):
    assert cli.main(["sample", "--pretrained", "nope", "--out", str(tmp_path / "s")]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert cli.main(["analyze", "--pretrained", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "--pretrained" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_pretrained(tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli.main(["sample", "--pretrained", SHIPPED, "--num", "3", "--steps", "4", "--out", str(out)]) == 0
    assert "shipped model dit-digits" in capsys.readouterr().out
    record = json.loads((out / "sample.json").read_text())
    assert record["results"]["pretrained"] == SHIPPED
    assert record["results"]["weights_sha256"] == read_card(SHIPPED)["weights"]["sha256"]
    assert np.load(out / "samples.npz")["samples"].shape == (3, 8, 8, 1)


@pytest.mark.slow
def test_sample_shows_progress_and_stops_between_batches(tmp_path, monkeypatch, capsys, default_sigint):
    """`sample` printed nothing until it was done and ignored Ctrl-C until the compiled chain ended. Now
    stderr states the denoiser evaluations first, then extrapolates the first batch's time beside a
    progress bar; Ctrl-C (SIGINT, sent here during the first batch) stops before the next batch, and
    nothing is written."""
    import signal

    from pifs_jax.models import training

    argv = ["sample", "--pretrained", SHIPPED, "--num", "3", "--steps", "2", "--batch-size", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "done")]) == 0
    err = capsys.readouterr().err
    assert "pifs-jax sample: 3 samples x 2 denoiser evaluations (2 ddim steps), 2 batches of 2" in err
    assert "pifs-jax sample: the first 2 samples took " in err and "s for the other 1" in err

    draw = training.sample_in_chunks

    def ctrl_c_during_the_first_batch(*args, on_chunk, **kwargs):
        def pressed():
            # raise_signal, not os.kill(getpid()): a process-directed signal may land on one of XLA's
            # threads, and on a loaded machine the main thread saw it only after the last chunk (a
            # flaky CI failure); a terminal's Ctrl-C is stopped at whichever safe point follows it
            signal.raise_signal(signal.SIGINT)
            on_chunk()

        return draw(*args, on_chunk=pressed, **kwargs)

    monkeypatch.setattr(training, "sample_in_chunks", ctrl_c_during_the_first_batch)
    out = tmp_path / "stopped"
    assert cli.main([*argv, "--no-progress", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"pifs-jax sample: interrupted after 2 of 3 samples; nothing written to {out}"
    assert not (out / "samples.npz").exists()


@pytest.mark.slow
def test_analyze_pretrained(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert cli.main(["analyze", "--pretrained", SHIPPED, "--samples", "2", "--steps", "3", "--out", str(out)]) == 0
    document = json.loads((out / "analysis.json").read_text())
    assert document["config"]["pretrained"] == SHIPPED
    assert document["config"]["weights_sha256"] == read_card(SHIPPED)["weights"]["sha256"]


# ----------------------------------------------------------------------------- two_regimes and reproduce


def _two_regimes():
    return reproduce.load_experiment(reproduce.discover_experiments()["two_regimes"])


def test_two_regimes_picks_the_shipped_models():
    module = _two_regimes()
    assert module.shipped_models("quick") == {"dit": SHIPPED}
    assert module.shipped_models("quick", retrain=True) is None
    assert module.shipped_models("full") is None  # the full modes always train


@pytest.mark.slow
def test_reproduce_quick_analyses_the_shipped_model_and_names_its_weights(tmp_path, monkeypatch):
    module = _two_regimes()

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped model must be analysed, not a model trained")

    monkeypatch.setattr(module, "train", no_training)
    section = module.run(tmp_path, quick=True)
    digest = read_card(SHIPPED)["weights"]["sha256"]
    assert section["results"]["source"] == "shipped"
    assert section["weights"] == [{"name": SHIPPED, "sha256": digest}]
    assert digest in section["markdown"] and "--retrain" in section["markdown"]
    saved = json.loads((tmp_path / "two_regimes" / "two_regimes.json").read_text())
    assert saved["config"]["weights"] == [{"name": SHIPPED, "sha256": digest}]


def test_the_report_names_the_shipped_weights_and_passes_retrain(tmp_path):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "fake.py").write_text(
        "NAME = 'fake'\nTITLE = 'a fake'\n"
        "def run(out_dir, *, quick=False, retrain=False):\n"
        "    used = [] if retrain else [{'name': 'dit-digits', 'sha256': 'abc123'}]\n"
        "    return {'markdown': f'retrain={retrain}', 'weights': used}\n"
    )
    report = reproduce.run_reproduction(tmp_path / "out", experiments_dir=experiments, progress=False)
    text = report.report_path.read_text()
    assert "shipped weights `dit-digits` (sha256 `abc123`)" in text and "retrain=False" in text
    saved = json.loads(report.json_path.read_text())
    assert saved["results"]["experiments"][0]["weights"] == [{"name": "dit-digits", "sha256": "abc123"}]
    report = reproduce.run_reproduction(tmp_path / "out", experiments_dir=experiments, progress=False, retrain=True)
    text = report.report_path.read_text()
    assert "trained from scratch (--retrain)" in text and "retrain=True" in text
