"""``pifs-jax analyze``: a trained run analysed end to end, and every bad input named."""

from __future__ import annotations

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import cli
from pifs_jax.analysis import VERDICTS
from pifs_jax.analysis.report import FIGURES
from reference import TINY_UNET_CONFIG


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A DiT trained for 3 steps on 8x8 digits (2x2 patches: M = 16), no samples drawn."""
    out = tmp_path_factory.mktemp("run")
    status = cli.main(
        [
            "train",
            "--model",
            "dit",
            "--data",
            "digits",
            "--patch-size",
            "2",
            "--set",
            "steps=3",
            "--set",
            "num_train=64",
            "--set",
            "num_test=16",
            "--set",
            "num_samples=0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 0
    return out


def _error(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.slow
def test_analyze_a_trained_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "analysis"
    status = cli.main(["analyze", "--run", str(tiny_run), "--samples", "2", "--steps", "4", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "analysis.md" in printed
    document = json.loads((out / "analysis.json").read_text())
    assert {"config", "seed", "environment", "results"} <= set(document)
    assert document["config"]["train_config"]["model"] == "dit"
    results = document["results"]
    t = np.asarray(results["t"])
    assert t.shape == (4,) and np.all(np.diff(t) < 0)  # chain order
    assert results["num_patches"] == 16 and results["trajectories"] == 2
    assert results["method"] == "exact"  # n = 64 <= 3072
    for name in ("kappa_diag_mean", "delta_cross_mean", "violations", "deviation_norm", "attention_entropy"):
        stats = results["steps"][name]
        assert np.all(np.asarray(stats["lo"]) <= np.asarray(stats["mean"]) + 1e-12)
        assert np.all(np.asarray(stats["mean"]) <= np.asarray(stats["hi"]) + 1e-12)
    # the DiT has attention, the run its training data: every claim was tested
    assert [c["verdict"] in VERDICTS[:3] for c in results["claims"]] == [True] * len(results["claims"])
    for figure in FIGURES:
        assert (out / figure).stat().st_size > 0
    table = (out / "analysis.md").read_text()
    assert "| claim | paper | ours | verdict |" in table


@pytest.mark.slow
def test_bad_inputs_are_named(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["analyze", "--run", str(empty), "--out", str(tmp_path / "a")]) == 2
    assert "--run" in _error(capsys)
    assert cli.main(["analyze", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert "--run" in _error(capsys)
    assert (
        cli.main(
            [
                "analyze",
                "--run",
                str(tiny_run),
                "--patch-size",
                "3",
                "--samples",
                "2",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "--patch-size" in _error(capsys)
    assert cli.main(["analyze", "--run", str(tiny_run), "--samples", "1", "--out", str(tmp_path / "c")]) == 2
    assert "--samples" in _error(capsys)


def test_num_data_without_data_takes_the_first_training_images(tiny_run, tmp_path, monkeypatch, capsys):
    """--num-data without --data was ignored (the whole training set was used) and not recorded: now the
    baseline is the first N of the run's training images and analysis.json's config records N. The
    analysis itself is replaced by a recorder (only the images and config handed to it are checked)."""
    from pifs_jax.analysis import report
    from pifs_jax.models.training import load_run, load_train_test

    seen = {}

    def analyze_model(eps_fn, sched, images, **kwargs):
        seen["images"] = np.asarray(images)
        return types.SimpleNamespace(claims=[], sample_quality=kwargs["sample_quality"])

    def write_analysis(folder, result, *, title, config, seed):
        seen["config"] = config

    monkeypatch.setattr(report, "analyze_model", analyze_model)
    monkeypatch.setattr(report, "write_analysis", write_analysis)
    train_images = load_train_test(load_run(tiny_run).config)[0]  # 64 digits
    argv = ["analyze", "--run", str(tiny_run), "--out", str(tmp_path / "a")]
    assert cli.main([*argv, "--num-data", "2"]) == 0
    np.testing.assert_array_equal(seen["images"], train_images[:2])
    assert seen["config"]["num_data"] == 2 and seen["config"]["data"] is None
    assert cli.main(argv) == 0  # default: every training image
    assert seen["images"].shape[0] == 64 and seen["config"]["num_data"] == 64
    capsys.readouterr()
    assert cli.main([*argv, "--num-data", "65"]) == 2
    assert "argument --num-data: the model was trained on 64 digits images" in _error(capsys)


def test_verdicts_are_printed_with_the_runs_recorded_sample_quality(tiny_run, tmp_path, monkeypatch, capsys):
    """`analyze` never read the run's quality, so an unconverged model's verdicts looked like a trained
    one's. Now the recorded quality (quality.json of the checkpoint's step, samples.npz) reaches the
    analysis and every judged verdict is printed with its caveat. The analysis is a recorder here."""
    import shutil

    from pifs_jax.analysis import report
    from pifs_jax.analysis.claims import CLAIM_NAMES, ClaimResult
    from pifs_jax.results import write_result_json

    seen = {}

    def analyze_model(eps_fn, sched, images, *, sample_quality, **kwargs):
        seen["sample_quality"] = sample_quality
        claims = [
            ClaimResult(CLAIM_NAMES[0], "paper", "ours", 1.0, None, "holds"),
            ClaimResult(CLAIM_NAMES[1], "paper", "ours", float("nan"), None, "not tested"),
        ]
        return report.ModelAnalysis(None, {}, claims, sample_quality)

    monkeypatch.setattr(report, "analyze_model", analyze_model)
    monkeypatch.setattr(report, "write_analysis", lambda folder, result, **kwargs: seen.update(written=result))
    assert cli.main(["analyze", "--run", str(tiny_run), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert seen["sample_quality"]["caveat"] == "sample quality unknown"  # the run drew no samples
    assert f"holds [sample quality unknown]  {CLAIM_NAMES[0]}: ours" in printed
    assert f"    not tested  {CLAIM_NAMES[1]}: ours" in printed  # no verdict, no caveat
    assert seen["written"].sample_quality is seen["sample_quality"]  # what analysis.md/json are written from

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    samples = np.where(np.arange(4 * 8 * 8).reshape(4, 8, 8, 1) % 2 == 0, 5.0, 0.0).astype(np.float32)
    np.savez(run / "samples.npz", samples=samples, samples_empirical=samples)
    write_result_json(run / "quality.json", {"sample_range": [0.0, 5.0]}, config={"steps": 3}, seed=0)
    assert cli.main(["analyze", "--run", str(run), "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    caveat = "model does not sample its data (50.0 % of values outside the data range)"
    assert f"caveat: {caveat}" in printed and f"holds [{caveat}]  {CLAIM_NAMES[0]}" in printed


def test_run_or_diffusers_exactly_one(tmp_path, capsys):
    assert cli.main(["analyze", "--out", str(tmp_path / "x")]) == 2
    assert "one of the arguments --run --pretrained --diffusers is required" in _error(capsys)
    assert cli.main(["analyze", "--run", "a", "--diffusers", "b", "--out", str(tmp_path / "x")]) == 2
    assert "not allowed with" in _error(capsys)


@pytest.mark.slow
def test_analyze_a_diffusers_folder(tmp_path, capsys):
    """A random 8x8x1 UNet2DModel folder (attention at 4x4): the digits serve as its baseline."""
    from pifs_jax.models import write_random_diffusers_unet

    config = dict(TINY_UNET_CONFIG)
    folder = write_random_diffusers_unet(tmp_path / "unet", config, seed=0)
    out = tmp_path / "analysis"
    assert (
        cli.main(
            [
                "analyze",
                "--diffusers",
                str(folder),
                "--samples",
                "2",
                "--steps",
                "3",
                "--num-data",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    document = json.loads((out / "analysis.json").read_text())
    assert document["config"]["baseline_data"] == "digits"
    assert document["results"]["num_patches"] == 16 and document["results"]["patch_size"] == 2
    assert document["results"]["attention_entropy_per_layer"]  # the converted model's attention layers
    assert cli.main(["analyze", "--diffusers", str(folder), "--data", "photos16", "--out", str(out)]) == 2
    assert "--data" in _error(capsys)
    assert cli.main(["analyze", "--diffusers", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "--diffusers" in _error(capsys)


def test_design_grid_reads_a_run_folder_and_a_diffusers_folder(tiny_run, tmp_path, capsys):
    """``pifs-jax design-grid --run`` and ``--diffusers`` load their model (a fixed grid: no design cost);
    a folder without a scheduler config and a missing run folder are refused by option name."""
    from pifs_jax.models import write_random_diffusers_unet

    edm = pj.fixed_grid(pj.linear(1000), 6, "edm").tolist()
    out = tmp_path / "from_run"
    assert cli.main(["design-grid", "--run", str(tiny_run), "--steps", "6", "--method", "edm", "--out", str(out)]) == 0
    record = json.loads((out / "grid.json").read_text())["results"]
    assert record["grid"] == edm and record["run"] == str(tiny_run) and record["corrections"] is None
    config = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
              "layers_per_block": 1, "norm_num_groups": 4}  # fmt: skip
    folder = write_random_diffusers_unet(tmp_path / "unet", config, seed=0)
    out = tmp_path / "from_diffusers"
    argv = ["design-grid", "--diffusers", str(folder), "--steps", "6", "--method", "edm", "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads((out / "grid.json").read_text())["results"]["grid"] == edm
    capsys.readouterr()
    bare = write_random_diffusers_unet(tmp_path / "bare", config, seed=0, scheduler_config=None)
    argv = ["design-grid", "--diffusers", str(bare), "--steps", "6", "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2 and "--diffusers" in capsys.readouterr().err
    argv = ["design-grid", "--run", str(tmp_path / "missing"), "--steps", "6", "--out", str(tmp_path / "y")]
    assert cli.main(argv) == 2 and "--run" in capsys.readouterr().err


def test_design_grid_corrected_writes_corrections_that_reproduce_its_record(tiny_run, tmp_path, capsys):
    """``--method corrected`` writes per-step corrections for the designed grid's steps; rebuilt from
    grid.json they give the held-out RMSE the record states for the kept candidate (the last of the
    4 design seeds, regenerated from --seed; float32 chains, 1e-5). ``--iterations`` is refused for
    a method without Adam steps."""
    from pifs_jax.grid_design import StepCorrections, corrected_denoiser, mean_grid_error, reference_solution
    from pifs_jax.models.training import load_run

    out = tmp_path / "corrected"
    argv = ["design-grid", "--run", str(tiny_run), "--steps", "3", "--method", "corrected", "--design-seeds", "4",
            "--iterations", "3", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    document = json.loads((out / "grid.json").read_text())
    record, grid = document["results"], np.asarray(document["results"]["grid"])
    assert document["config"]["iterations"] == 3 and len(record["record"]["starts"]["geometric"]["grid"]) == 4
    corrections = StepCorrections(**{k: np.asarray(v) for k, v in record["corrections"].items()})
    assert corrections.times.tolist() == grid[1:].tolist()
    run = load_run(tiny_run)
    sched = pj.named_schedule(run.config.schedule, run.config.T)
    noises = jax.random.normal(jax.random.PRNGKey(0), (4, *run.config.image_shape))
    held = noises[3:]
    rmse = mean_grid_error(corrected_denoiser(run.eps_fn, corrections), sched, grid, held,
                           reference_solution(run.eps_fn, sched, held))  # fmt: skip
    kept = record["record"]["kept"]
    assert rmse == pytest.approx(record["record"]["held_out_rmse"][kept], rel=1e-5)
    capsys.readouterr()
    argv = ["design-grid", "--run", str(tiny_run), "--steps", "3", "--method", "edm", "--iterations", "3",
            "--out", str(tmp_path / "z")]  # fmt: skip
    assert cli.main(argv) == 2 and "--iterations" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_between_chunks_writes_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    """`analyze` ignored Ctrl-C until the whole compiled analysis ended and printed no progress. Now the
    trajectories run in chunks (--chunk; 1 on a CPU) with a progress display, and an interrupt between
    chunks exits with 130 and one line saying how far it got; the earlier analysis in --out is kept.
    The analysis is a stand-in here (its chunks and interrupt: tests/test_analysis_chain.py)."""
    from pifs_jax.analysis import report

    seen = []

    def interrupted_analysis(eps_fn, sched, images, **kwargs):
        seen.append({k: kwargs[k] for k in ("chunk", "progress")})
        raise KeyboardInterrupt("after 1 of 2 trajectories")

    monkeypatch.setattr(report, "analyze_model", interrupted_analysis)
    out = tmp_path / "a"
    out.mkdir()
    (out / "analysis.md").write_text("an earlier analysis\n")
    argv = ["analyze", "--run", str(tiny_run), "--samples", "2", "--steps", "2", "--out", str(out)]
    assert cli.main(argv) == 130
    assert seen == [{"chunk": 1 if jax.default_backend() == "cpu" else 8, "progress": True}]
    assert _error(capsys).strip().splitlines()[-1] == (
        f"pifs-jax analyze: interrupted after 1 of 2 trajectories; nothing written to {out} "
        "(an earlier analysis there is kept)"
    )
    assert (out / "analysis.md").read_text() == "an earlier analysis\n" and not (out / "analysis.json").exists()
    assert cli.main([*argv, "--chunk", "4", "--no-progress"]) == 130
    assert seen[-1] == {"chunk": 4, "progress": False}


def _unet_folder(tmp_path: Path, sample_size=8) -> Path:
    """A random UNet2DModel folder of 1-channel images (attention at half resolution)."""
    from pifs_jax.models import write_random_diffusers_unet

    config = {**TINY_UNET_CONFIG, "sample_size": sample_size}
    return write_random_diffusers_unet(tmp_path / "unet", config, seed=0)


@pytest.fixture
def recorded_analysis(monkeypatch):
    """The analysis replaced by a recorder of the baseline images and the config it is given."""
    from pifs_jax.analysis import report

    seen = {}

    def analyze_model(eps_fn, sched, images, **kwargs):
        seen["images"] = np.asarray(images)
        return types.SimpleNamespace(claims=[], sample_quality=kwargs["sample_quality"])

    monkeypatch.setattr(report, "analyze_model", analyze_model)
    monkeypatch.setattr(report, "write_analysis", lambda folder, result, **kwargs: seen.update(kwargs))
    return seen


def test_out_that_cannot_be_created_is_refused_before_the_work(tmp_path, capsys):
    """--out /proc/x passed the permission check, the analysis ran, then writing failed: now the folder and a
    file in it are really created (and removed) when the options are read."""
    from pifs_jax.cli.common import output_dir

    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    assert cli.main(["analyze", "--diffusers", str(tmp_path / "nothing"), "--out", "/proc/x"]) == 2
    assert "argument --out: cannot create '/proc/x' or a file in it:" in _error(capsys)
    assert output_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # the folders the check created are gone again


def test_own_images_with_data_file(tmp_path, recorded_analysis, capsys):
    """A model whose image shape no bundled data set has could not be analysed: --data-file gives the
    baseline images, (N, H, W, C) or (N, C, H, W), checked against the model's shape and [-1, 1]."""
    folder = _unet_folder(tmp_path, [8, 16])
    out = str(tmp_path / "a")
    assert cli.main(["analyze", "--diffusers", str(folder), "--out", out]) == 2
    err = _error(capsys)
    assert "argument --data: no bundled data set has the model's image shape (8, 16, 1)" in err
    assert "--data-file images.npy, an array (N, 8, 16, 1) or (N, 1, 8, 16) with values in [-1, 1]" in err
    images = np.linspace(-1, 1, 5 * 8 * 16).reshape(5, 1, 8, 16).astype(np.float32)  # PyTorch's layout
    np.save(tmp_path / "images.npy", images)
    argv = ["analyze", "--diffusers", str(folder), "--data-file", str(tmp_path / "images.npy"), "--out", out]
    assert cli.main(argv) == 0
    np.testing.assert_array_equal(recorded_analysis["images"], images.transpose(0, 2, 3, 1))
    assert recorded_analysis["config"]["data_file"] == str(tmp_path / "images.npy")
    assert cli.main([*argv, "--num-data", "2"]) == 0 and recorded_analysis["images"].shape == (2, 8, 16, 1)
    assert cli.main([*argv, "--num-data", "6"]) == 2
    assert "argument --num-data: " in _error(capsys)
    for bad, message in (
        (images * 2, "expected values in [-1, 1] (the models' input scale)"),
        (images[:, :, :4], "expected images of the model's shape, (N, H, W, C) = (N, 8, 16, 1) or"),
        (images[:1], "expected at least 2 images"),
    ):
        np.save(tmp_path / "bad.npy", bad)
        argv = ["analyze", "--diffusers", str(folder), "--data-file", str(tmp_path / "bad.npy"), "--out", out]
        assert cli.main(argv) == 2
        err = _error(capsys)
        assert "argument --data-file: " in err and message in err and "bad.npy" in err


def test_baseline_data_sets_are_checked_against_the_model(tmp_path, recorded_analysis, capsys):
    """--data photos32 on a smaller model gave a bare shape message; --data digits named n = 4096, a
    default the user never typed (digits hold 1437 training images): now the default takes what there is."""
    folder = str(_unet_folder(tmp_path))
    out = str(tmp_path / "a")
    assert cli.main(["analyze", "--diffusers", folder, "--data", "photos32", "--out", out]) == 2
    assert (
        "argument --data: the photos32 data set does not fit the model: its images are (32, 32, 3), the "
        "model's are (8, 8, 1); name one of the model's shape (digits) or give your own images with --data-file"
    ) in _error(capsys)
    assert cli.main(["analyze", "--diffusers", folder, "--data", "digits", "--out", out]) == 0
    assert recorded_analysis["images"].shape == (1437, 8, 8, 1)
    assert cli.main(["analyze", "--diffusers", folder, "--num-data", "5000", "--out", out]) == 2
    err = _error(capsys)
    assert "argument --num-data: the digits data set holds 1437 training images; expected at most 1437, got 5000" in err
    assert "4096" not in err


def test_one_patch_is_refused_before_the_work(tmp_path, capsys):
    """--patch-size equal to the image side computed the chains for a minute, then failed."""
    folder = str(_unet_folder(tmp_path))
    argv = ["analyze", "--diffusers", folder, "--num-data", "16", "--patch-size", "8", "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 2
    assert "argument --patch-size: expected a patch size that cuts the 8x8 images into at least 2 patches" in _error(
        capsys
    )


def test_a_run_config_that_is_not_utf8_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(b'{"model": "\xff"}')
    assert cli.main(["analyze", "--run", str(run), "--out", str(tmp_path / "a")]) == 2
    assert f"argument --run: {str(run / 'config.json')!r} is not UTF-8 text (byte 0xff at offset 11)" in _error(capsys)
