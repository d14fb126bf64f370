"""``pifs-jax sample --diffusers PATH``: samples of a diffusers UNet2DModel as PNG and .npz.

Tested through the subcommand's own record (:data:`pifs_jax.cli.sample.SUBCOMMAND`): its options
on a fresh parser, then its ``run``. The samples equal the library's DDIM chain from the same x_T.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusers_loading import TINY  # the one tiny UNet2DModel config of the diffusers tests

import pifs_jax as pj
from pifs_jax.cli.common import UsageError
from pifs_jax.cli.sample import SUBCOMMAND
from pifs_jax.models import load_diffusers_unet, write_random_diffusers_unet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pifs-jax sample")
    SUBCOMMAND.add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["sample", *argv]
    return args


@pytest.mark.slow
def test_sample_writes_png_and_npz_equal_to_the_library(tmp_path, capsys):
    folder = write_random_diffusers_unet(tmp_path / "model", TINY, seed=2)
    out = tmp_path / "out"
    assert (
        SUBCOMMAND.run(
            parse(
                [
                    "--diffusers",
                    str(folder),
                    "--steps",
                    "5",
                    "--num",
                    "3",
                    "--seed",
                    "4",
                    "--batch-size",
                    "2",
                    "--out",
                    str(out),
                ]
            )
        )
        == 0
    )
    assert "3 samples" in capsys.readouterr().out
    assert (out / "samples.png").read_bytes().startswith(PNG_MAGIC)
    with np.load(out / "samples.npz") as data:
        samples, x_T, grid = data["samples"], data["x_T"], data["grid"]
        assert int(data["seed"]) == 4
    assert samples.shape == (3, 8, 8, 3) and samples.dtype == np.float32
    loaded = load_diffusers_unet(folder)
    np.testing.assert_array_equal(grid, loaded.sampling_grid(5))  # DDPM config: leading, offset 0 -> [0, 1, 201, ...]
    np.testing.assert_array_equal(grid, [0, 1, 201, 401, 601, 801])
    np.testing.assert_array_equal(x_T, jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 3)))
    expected = pj.ddim_sample(loaded.eps_fn, loaded.schedule, jnp.asarray(x_T), grid=grid)
    # chunks of 2 (last one padded) vs one batch of 3: the same per-sample program, float32 round-off
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5)
    doc = json.loads((out / "sample.json").read_text())
    assert doc["results"]["grid"] == [0, 1, 201, 401, 601, 801]
    assert doc["results"]["diffusers_timesteps"] == [800, 600, 400, 200, 0]
    assert doc["config"]["command"].startswith("pifs-jax sample --diffusers")


def test_sample_refuses_bad_folders_naming_the_option(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a diffusers pipeline folder") as info:
        SUBCOMMAND.run(parse(["--diffusers", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]))
    assert info.value.option == "--diffusers"
    folder = write_random_diffusers_unet(tmp_path / "model", TINY, scheduler_config=None)
    with pytest.raises(UsageError, match="holds no scheduler config") as info:
        SUBCOMMAND.run(parse(["--diffusers", str(folder), "--out", str(tmp_path / "o")]))
    assert info.value.option == "--diffusers"
    folder = write_random_diffusers_unet(tmp_path / "model2", TINY)
    with pytest.raises(UsageError, match="num_train_timesteps") as info:
        SUBCOMMAND.run(parse(["--diffusers", str(folder), "--steps", "5000", "--out", str(tmp_path / "o")]))
    assert info.value.option == "--steps"
    assert not (tmp_path / "o").exists()  # nothing written on refusal
