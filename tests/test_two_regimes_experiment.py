"""The two_regimes experiment (quick mode, retrain: 8x8 digits, a few training steps): its contract, its
files, and its run cache (a finished run of the same configuration is loaded, another retrained)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pifs_jax import reproduce
from pifs_jax.analysis.claims import CLAIM_NAMES, VERDICTS
from pifs_jax.analysis.report import FIGURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    module = reproduce.load_experiment(reproduce.discover_experiments()["two_regimes"])
    out = tmp_path_factory.mktemp("results")
    return module, module.run(out, quick=True, retrain=True), out  # the training path (not the shipped model)


def test_every_model_is_analysed_and_judged(experiment):
    module, section, out = experiment
    results = section["results"]
    assert results["mode"] == "quick"
    models = results["models"]
    assert set(models) == {"dit", "empirical", "dit_mu0.01"}  # the quick mode leaves the UNet out
    for name, model in models.items():
        assert [c["name"] for c in model["claims"]] == list(CLAIM_NAMES)
        assert all(c["verdict"] in VERDICTS for c in model["claims"])
        folder = out / module.NAME / name
        document = json.loads((folder / "analysis.json").read_text())
        assert {"config", "seed", "environment", "results"} <= set(document)
        assert np.all(np.diff(document["results"]["t"]) < 0)
        for figure in FIGURES:
            assert (folder / figure).is_file()
        assert (folder / "analysis.md").is_file()
    # the DiT and the empirical denoiser (softmax over the data) both have attention, and the training data give the baseline: nothing is left untested
    assert all(c["verdict"] != "not tested" for m in models.values() for c in m["claims"])
    for figure in section["figures"]:
        assert (out / figure).is_file()
    assert (
        "**Beyond the paper (a)" in section["markdown"]
        and "| claim | paper | DiT | empirical-optimal |" in section["markdown"]
    )
    saved = json.loads((out / module.NAME / "two_regimes.json").read_text())
    assert saved["config"]["quick"] is True and saved["seed"] == module.SEED


def test_the_regularised_run_differs_only_in_mu(experiment):
    module, section, _ = experiment
    training = section["results"]["training"]
    assert training["dit_mu0.01"]["mu"] == 0.01 and training["dit"]["mu"] == 0.0
    assert training["dit_mu0.01"]["steps"] == training["dit"]["steps"]
    configs = module.run_configs(module.CONFIG["quick"])
    a, b = configs["dit"].identity(), configs["dit_mu0.01"].identity()
    assert {k for k in a if a[k] != b[k]} == {"mu"}


def test_a_finished_run_is_loaded_and_a_changed_one_retrained(experiment, monkeypatch):
    module, _, out = experiment
    configs = module.run_configs(module.CONFIG["quick"])
    runs = out / module.NAME / "runs"
    cached = module.trained_run("dit", configs["dit"], runs)
    assert cached["cached"] and int(cached["run"].state.step) == configs["dit"].steps
    calls = []

    class Trained(Exception):
        pass

    def fake_train(config, folder, *, resume, overwrite, progress):
        calls.append((config.steps, resume, overwrite))
        raise Trained

    monkeypatch.setattr(module, "train", fake_train)
    longer = configs["dit"].__class__(**{**configs["dit"].to_dict(), "steps": configs["dit"].steps + 1})
    with pytest.raises(Trained):
        module.trained_run("dit", longer, runs)  # another configuration: trained afresh over the folder
    with pytest.raises(Trained):
        module.trained_run("new", configs["dit"], runs)  # nothing there yet
    assert calls == [(longer.steps, False, True), (configs["dit"].steps, False, True)]


def test_a_shipped_models_card_quality_is_read_not_lost():
    """The shipped path takes fd, memorisation and the fraction outside [-1.05, 1.05] from the card (no NaN)."""
    from pifs_jax import reproduce
    from pifs_jax.models.pretrained import pretrained

    module = reproduce.load_experiment(reproduce.discover_experiments()["two_regimes"])
    loaded = pretrained("dit-digits")
    held = loaded.card["quality"]["held_out"]
    quality = module.shipped_run(loaded)["quality"]
    assert quality["model"]["fd_patches"] == held["fd_patches"]
    assert quality["train_crops"]["fd_patches"] == held["fd_train_crops"]
    assert quality["memorisation_ratio"] == held["memorisation_ratio"]
    assert quality["fraction_outside_1.05"] == held["fraction_outside"]


def test_the_report_rows_carry_each_models_sample_quality_caveat():
    """The report's per-model rows printed a diverged model's verdicts like a trained one's: now each
    judged verdict, the "claims that hold" counts and the DiT/UNet line carry the model's caveat, and a
    shipped model's card gives its record. Stand-in analyses: nothing is trained or analysed."""
    from pifs_jax import reproduce
    from pifs_jax.analysis.claims import ClaimResult
    from pifs_jax.analysis.report import ModelAnalysis, card_sample_quality, reference_sample_quality
    from pifs_jax.analysis.report import sample_quality_record as record
    from pifs_jax.models.pretrained import read_card

    module = reproduce.load_experiment(reproduce.discover_experiments()["two_regimes"])
    card = read_card("dit-digits")
    assert card_sample_quality(card)["caveat"] is None  # the shipped model samples its data

    def analysis(sample_quality):
        claims = [ClaimResult(name, "p", "o", 1.0, None, "holds") for name in CLAIM_NAMES]
        return ModelAnalysis(None, {}, claims, sample_quality)

    caveat = "model does not sample its data (62.5 % of values outside the data range)"
    analyses = {
        "dit": analysis(record(0.625, source="test")),
        "unet": analysis(record(None, source="test")),
        "empirical": analysis(reference_sample_quality("test")),
    }
    nan = float("nan")
    training = {
        name: {"steps": 5, "weights": None, "fraction_outside_data_range": 0.6, "fraction_outside_1.05": nan}
        | dict.fromkeys(("fd_patches", "fd_patches_train_crops", "fd_patches_noise", "memorisation_ratio"), nan)
        | {"train_seconds": 1.0, "images_per_s": 1.0}
        for name in ("dit", "unet")
    }
    models = {name: {"delta_cross_mean": [1.0], "crossover_window": None, "mean_violations": 0.0} for name in analyses}
    results = {
        "settings": {"trajectories": 2, "chain_steps": 3},
        "mode": "quick",
        "source": "trained",
        "image_shape": [8, 8, 1],
        "num_patches": 16,
        "patch_size": 2,
        "training": training,
        "models": models,
    }
    text = module.render_markdown(results, analyses)
    assert f"**Caveat, DiT: {caveat}**" in text and "**Caveat, UNet: sample quality unknown**" in text
    assert "Caveat, empirical" not in text
    rows = [line for line in text.splitlines() if line.startswith("| regime")]
    assert rows and all(
        f"**holds [{caveat}]**" in row and "**holds [sample quality unknown]**" in row and row.count("[") == 2
        for row in rows
    )
    assert (
        f"DiT 10 of 10 [{caveat}], UNet 10 of 10 [sample quality unknown]" in text
        and "empirical-optimal 10 of 10" in text
    )
    assert "UNet: crossover window none, 10 claims hold [sample quality unknown]" in text
