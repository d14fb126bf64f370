"""Sampling grids: diffusers spacings converted to this package's indexing, AYS tables, validation."""

import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.errors import ArgumentError


def test_uniform_and_full_grids():
    np.testing.assert_array_equal(pj.uniform_grid(1000, 50), np.arange(0, 1001, 20))
    np.testing.assert_array_equal(pj.full_grid(5), np.arange(6))
    g = pj.uniform_grid(1000, 7)
    assert g[0] == 0 and g[-1] == 1000 and np.all(np.diff(g) > 0)


def test_diffusers_spacings_by_hand():
    # diffusers DDIM, T = 1000, N = 10 (hand-computed from its set_timesteps formulas)
    assert pj.diffusers_timesteps(1000, 10, spacing="leading", steps_offset=1).tolist() == [
        901,
        801,
        701,
        601,
        501,
        401,
        301,
        201,
        101,
        1,
    ]
    assert pj.diffusers_timesteps(1000, 10, spacing="trailing").tolist() == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
    ]
    assert pj.diffusers_timesteps(1000, 10, spacing="linspace").tolist() == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]
    # our index = diffusers index + 1, with tau_0 = 0 prepended
    assert pj.diffusers_grid(1000, 10, spacing="leading", steps_offset=1).tolist() == [
        0,
        2,
        102,
        202,
        302,
        402,
        502,
        602,
        702,
        802,
        902,
    ]
    assert pj.diffusers_grid(1000, 10, spacing="trailing").tolist() == [
        0,
        100,
        200,
        300,
        400,
        500,
        600,
        700,
        800,
        900,
        1000,
    ]
    assert pj.diffusers_grid(1000, 10, spacing="linspace").tolist()[:3] == [0, 1, 112]


def test_align_your_steps_tables():
    g = pj.align_your_steps_grid("sd15")
    assert g.tolist() == [0, 25, 125, 234, 344, 456, 546, 646, 737, 851, 1000]
    assert pj.align_your_steps_grid("sdxl").tolist()[:3] == [0, 14, 54]
    with pytest.raises(ValueError, match="model"):
        pj.align_your_steps_grid("sd3")


@pytest.mark.parametrize(
    "grid, match",
    [
        ([1, 5, 10], "tau_0 = 0"),
        ([0, 5, 5, 10], "strictly increasing"),
        ([0, 10, 5], "strictly increasing"),
        ([0, 500, 1001], "exceeds"),
        ([0], "N >= 1"),
        ([0.0, 2.5], "integers"),
    ],
)
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        pj.contraction_threshold(pj.cosine(1000), grid=np.asarray(grid))


def test_bad_spacing_and_steps():
    with pytest.raises(ValueError, match="spacing"):
        pj.diffusers_timesteps(1000, 10, spacing="karras")
    with pytest.raises(ValueError, match="num_steps"):
        pj.uniform_grid(10, 11)
    # ArgumentErrors naming the parameter (the command line maps num_steps to --steps); spacing was a plain ValueError
    with pytest.raises(ArgumentError, match=r"^spacing: unknown timestep_spacing 'karras'") as info:
        pj.diffusers_timesteps(1000, 10, spacing="karras")
    assert info.value.argument == "spacing"
    for steps in (0, -3, 11, 2.5, None, "5"):
        with pytest.raises(ArgumentError, match=r"^num_steps: ") as info:
            pj.uniform_grid(10, steps)  # pyright: ignore[reportArgumentType]
        assert info.value.argument == "num_steps"
    with pytest.raises(ValueError, match="duplicates"):
        pj.grid_from_diffusers_timesteps([5, 5, 3])
