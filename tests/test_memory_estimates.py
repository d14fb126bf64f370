"""Memory checked before the work: `sample`, `analyze`, `train` and the diffusers loader refuse work
that cannot fit, naming the option (or config key) that sets its size, with the estimate and the
available memory. Before, a huge ``sample_size`` aborted in C++ or asked for terabytes mid-run, and
a huge ``--samples`` or batch size failed after the work had started.

The available memory is set by replacing :func:`pifs_jax.memory.available_memory_bytes`, so the
tests do not depend on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pifs_jax import cli, memory
from pifs_jax.errors import ArgumentError
from pifs_jax.models import load_diffusers_unet, write_random_diffusers_unet
from reference import TINY_UNET_CONFIG

TINY_UNET = TINY_UNET_CONFIG
GB = 10**9


@pytest.fixture
def eight_gb(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 8 * GB)


def _folder(tmp_path: Path, sample_size: int = 8) -> Path:
    folder = write_random_diffusers_unet(tmp_path / "unet", TINY_UNET, seed=0)
    if sample_size != 8:
        config_file = folder / "unet" / "config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "sample_size": sample_size}))
    return folder


def test_available_memory_and_the_check(monkeypatch):
    available = memory.available_memory_bytes()
    assert available is None or available > 0
    assert memory.format_bytes(512) == "512 B" and memory.format_bytes(30.7e9) == "30.7 GB"
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 2 * GB)
    memory.check_memory(GB, argument="--num", what="x")  # fits
    with pytest.raises(ArgumentError, match=r"^--num: 3 samples needs an estimated 3\.0 GB of memory, but 2\.0 GB"):
        memory.check_memory(3 * GB, argument="--num", what="3 samples")
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)  # unreadable: nothing is checked
    memory.check_memory(10**18, argument="--num", what="x")


def test_estimates_are_the_stated_sums():
    assert memory.sampling_bytes(num=10, batch_size=4, image_shape=(8, 8, 1), forward=100) == 4 * 10 * 64 * 4 + 400
    assert memory.sampling_bytes(num=2, batch_size=16, image_shape=(8, 8, 1), forward=100) == 4 * 2 * 64 * 4 + 200
    assert memory.training_bytes(batch_size=8, forward=100, num_params=10, probes=1) == 2 * 2 * 8 * 100 + 5 * 40
    exact = memory.analysis_bytes(samples=3, steps=5, image_shape=(8, 8, 1), num_patches=16, exact=True)
    assert exact == 2 * 3 * (2 * 64 + 5 * (4 * 16 + 8)) * 4 + 64 * 64 * 4


@pytest.mark.parametrize("sample_size", [1024, 65536])
def test_a_sample_size_whose_forward_pass_cannot_fit_is_refused_by_name(tmp_path, eight_gb, sample_size):
    """sample_size 65536 aborted in C++ (rc 134), 1024 asked for terabytes: refused at load, naming it."""
    folder = _folder(tmp_path, sample_size)
    pattern = rf"^sample_size: {sample_size}x{sample_size} images \(sample_size in '.*config\.json'\): .* needs an "
    with pytest.raises(ArgumentError, match=pattern + r"estimated [0-9.]+ [TP]B of memory, but 8\.0 GB is available"):
        load_diffusers_unet(folder)


def test_the_forward_estimate_grows_with_the_attention_matrices(tmp_path):
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models.diffusers_unet import DiffusersUNet2D, read_unet_config

    loaded = load_diffusers_unet(_folder(tmp_path))
    small = memory.forward_bytes(loaded.eps_fn, (8, 8, 1))
    config = read_unet_config({"_class_name": "UNet2DModel", **TINY_UNET, "sample_size": 32})
    large = memory.forward_bytes(as_eps_fn(DiffusersUNet2D(config), loaded.params), (32, 32, 1))
    assert 0 < small and large > 16 * small  # feature maps x 16, attention scores x 256


def test_sample_refuses_num_and_batch_size_that_cannot_fit(tmp_path, eight_gb, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "samples"
    assert cli.main(["sample", "--diffusers", str(folder), "--num", "10000000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "argument --num: 10000000000 samples of 8x8x1 images, 16 at a time, needs an estimated" in err
    assert "but 8.0 GB is available" in err and not out.exists()
    argv = ["sample", "--diffusers", str(folder), "--num", "1000000000", "--batch-size", "1000000000"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "argument --batch-size: 1000000000 samples" in capsys.readouterr().err and not out.exists()


def test_analyze_refuses_samples_that_cannot_fit(tmp_path, eight_gb, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", "--diffusers", str(_folder(tmp_path)), "--num-data", "16", "--samples", "100000000"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "argument --samples: analysing 100000000 trajectories of 50 steps (8x8x1 images) needs an estimated" in err
    assert "but 8.0 GB is available" in err and not out.exists()


def test_train_refuses_a_batch_size_that_cannot_fit(tmp_path, eight_gb, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--set", "batch_size=100000", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "argument --set: batch_size=100000: a training step on 100000 photos16 images (dit, quick) needs" in err
    assert "but 8.0 GB is available" in err and not out.exists()
    assert cli.main(["train", "--batch-size", "100000", "--out", str(out), "--no-progress"]) == 2
    assert "argument --batch-size: a training step on 100000" in capsys.readouterr().err
