"""Figures: what is drawn equals the library's numbers; saving is atomic; bad input is named."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

import pifs_jax as pj
from pifs_jax import plotting


@pytest.fixture(scope="module")
def chains():
    return {"linear": pj.linear(100), "cosine": (pj.cosine(100, s=0.0), pj.uniform_grid(100, 10))}


def test_contraction_threshold_lines_are_the_library_values(chains):
    fig = plotting.plot_contraction_threshold(chains)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["linear"].get_xdata(), np.arange(1, 101))
    np.testing.assert_allclose(lines["linear"].get_ydata(), pj.contraction_threshold(chains["linear"]), rtol=1e-6)
    np.testing.assert_array_equal(lines["cosine"].get_xdata(), np.arange(10, 101, 10))
    assert ax.get_yscale() == "log"


def test_heatmap_is_centred_at_one_with_thresholds_overlaid():
    sched, grid = pj.cosine(100), pj.uniform_grid(100, 20)
    fig = plotting.plot_expansion_heatmap(sched, grid, lambda_range=(0.1, 10), num_lambdas=9)
    ax = fig.axes[0]
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, CenteredNorm) and mesh.norm.vcenter == 1.0
    np.testing.assert_allclose(
        np.asarray(mesh.get_array()).reshape(9, 20),
        np.asarray(pj.expansion_factor(sched, np.geomspace(0.1, 10, 9), grid)).T,
        rtol=1e-6,
    )
    lam_star_line = ax.get_lines()[0]
    np.testing.assert_allclose(lam_star_line.get_ydata(), pj.expansion_threshold(sched, grid), rtol=1e-6)
    moran_line = ax.get_lines()[1]
    np.testing.assert_allclose(moran_line.get_ydata()[0], pj.moran_threshold(sched, grid), rtol=1e-6)
    assert ax.get_yscale() == "log"


def test_threshold_and_log_snr_figures_draw_into_a_given_axes(chains):
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plotting.plot_expansion_threshold(chains, ax=ax1) is fig
    assert plotting.plot_log_snr(pj.linear(100), ax=ax2) is fig
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), np.asarray(pj.linear(100).log_snr)[1:], rtol=1e-6)


def test_save_figure_writes_png_atomically(tmp_path, chains):
    path = plotting.save_figure(plotting.plot_log_snr(chains), tmp_path / "deep" / "snr.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in path.parent.iterdir()] == ["snr.png"]  # no temporary files left
    with pytest.raises(ValueError, match="path"):
        plotting.save_figure(plotting.plot_log_snr(chains), tmp_path / "no_suffix")


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="lambda_range"):
        plotting.lambda_grid((1.0, 0.5))
    with pytest.raises(ValueError, match="schedules"):
        plotting.plot_contraction_threshold([pj.linear(10)])
    with pytest.raises(ValueError, match="grid"):
        plotting.plot_contraction_threshold({"a": pj.linear(10)}, grid=np.arange(11))
    with pytest.raises(ValueError, match="sched"):
        plotting.plot_expansion_heatmap("cosine")
