"""diffusers scheduler configs in and out (pifs_jax.interop), checked without torch or diffusers.

Reference values are the diffusers formulas re-implemented here in plain float64 NumPy, and
timestep lists worked out by hand from ``DDIMScheduler.set_timesteps``.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax import grids, interop, schedules
from pifs_jax.errors import ArgumentError
from reference import cosine_betas, lin_zero_snr_alphas_cumprod

# Round-trip tolerance (float64): relative error on alpha_bar_t and sigma_t^2 = 1 - alpha_bar_t.
# A float64 beta near 1 only knows 1 - beta to ulp(1) = 2.2e-16 absolute, so each step with
# beta_s > 1/2 adds up to 2.2e-16 / (1 - beta_s) relative error on alpha_bar_t for t >= s (a
# property of the trained_betas format, not of the code); elsewhere the budget is 1e-12.
ROUND_TRIP_RTOL = 1e-12


def _round_trip_tolerance(betas):
    betas = np.asarray(betas, dtype=np.float64)
    near_one = np.where(betas > 0.5, np.finfo(np.float64).eps / (1.0 - betas), 0.0)
    return ROUND_TRIP_RTOL + np.concatenate([[0.0], np.cumsum(near_one)])


def _assert_round_trip(original, restored):
    assert restored.T == original.T
    tol = _round_trip_tolerance(original.betas)
    ab0, ab1 = np.asarray(original.alpha_bar), np.asarray(restored.alpha_bar)
    s0, s1 = np.asarray(original.sigma2)[1:], np.asarray(restored.sigma2)[1:]
    assert restored.alpha_bar[0] == 1.0
    assert np.all(np.abs(ab1 / ab0 - 1) <= tol), np.max(np.abs(ab1 / ab0 - 1) / tol)
    assert np.all(np.abs(s1 / s0 - 1) <= tol[1:]), np.max(np.abs(s1 / s0 - 1) / tol[1:])


# ----------------------------------------------------------------------------- bundled configs


def test_bundled_configs_exist_and_load():
    for name in ("ddpm_cifar10", "stable_diffusion_v1_5"):
        path = interop.example_config_path(name)
        assert path.is_file()
        assert isinstance(interop.load_config(path), dict)
    with pytest.raises(ValueError, match="name"):
        interop.example_config_path("sdxl")


def test_bundled_published_values():
    ddpm = interop.load_config(interop.example_config_path("ddpm_cifar10"))
    assert ddpm["_class_name"] == "DDPMScheduler"
    assert (ddpm["beta_schedule"], ddpm["beta_start"], ddpm["beta_end"], ddpm["num_train_timesteps"]) == (
        "linear",
        0.0001,
        0.02,
        1000,
    )
    sd = interop.load_config(interop.example_config_path("stable_diffusion_v1_5"))
    assert sd["_class_name"] == "PNDMScheduler"
    assert (sd["beta_schedule"], sd["beta_start"], sd["beta_end"], sd["num_train_timesteps"]) == (
        "scaled_linear",
        0.00085,
        0.012,
        1000,
    )
    assert sd["steps_offset"] == 1 and sd["set_alpha_to_one"] is False and sd["skip_prk_steps"] is True


def test_ddpm_cifar10_config_is_linear(x64):
    # Same constructor, same float64 arithmetic: equal to the last bit (tolerance 0).
    sched = interop.from_diffusers_config(interop.example_config_path("ddpm_cifar10"))
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.linear(1000).log_alpha_bar)
    # and equal to diffusers' formula re-done naively in float64, to 1e-12 relative
    naive = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(sched.alpha_bar[1:], naive, rtol=1e-12)


def test_stable_diffusion_config_is_scaled_linear(x64):
    sched = interop.from_diffusers_config(interop.example_config_path("stable_diffusion_v1_5"))
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.scaled_linear(1000).log_alpha_bar)
    naive = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    np.testing.assert_allclose(sched.alpha_bar[1:], naive, rtol=1e-12)


def test_bundled_configs_in_float32(x32):
    sched = interop.from_diffusers_config(interop.example_config_path("ddpm_cifar10"))
    assert sched.dtype == jnp.float32
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.linear(1000).log_alpha_bar)


def test_config_folder_is_accepted(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(interop.example_config_path("ddpm_cifar10").read_text())
    assert interop.load_config(tmp_path)["_class_name"] == "DDPMScheduler"


# ----------------------------------------------------------------------------- beta schedules


def test_class_name_alone_takes_ddim_defaults(x64):
    np.testing.assert_array_equal(
        interop.from_diffusers_config({"_class_name": "DDIMScheduler"}).log_alpha_bar,
        schedules.linear(1000).log_alpha_bar,
    )


@pytest.mark.parametrize("T", [10, 1000])
def test_squaredcos_cap_v2_is_cosine(x64, T):
    sched = interop.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": T})
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.cosine(T, s=0.008).log_alpha_bar)
    # diffusers' betas_for_alpha_bar, naively in float64: the naive ratio of cos^2 loses ~1e-13
    # relative near t = T, hence 1e-11 on log alpha_bar (absolute).
    naive = np.cumsum(np.log1p(-cosine_betas(T)))
    np.testing.assert_allclose(sched.log_alpha_bar[1:], naive, rtol=0, atol=1e-11)
    # the last beta is clipped at max_beta = 0.999
    np.testing.assert_allclose(sched.betas[-1], 0.999, rtol=1e-12)


def test_sigmoid_beta_schedule(x64):
    sched = interop.from_diffusers_config(
        {"beta_schedule": "sigmoid", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 100}
    )
    expected = 1 / (1 + np.exp(-np.linspace(-6, 6, 100))) * (0.02 - 1e-4) + 1e-4
    np.testing.assert_allclose(sched.betas, expected, rtol=1e-12)


def test_trained_betas_take_precedence(x64):
    rng = np.random.default_rng(0)
    betas = np.sort(rng.uniform(1e-4, 0.05, size=50))
    for schedule in ("scaled_linear", "squaredcos_cap_v2", "not-a-schedule"):
        config = {"num_train_timesteps": 50, "beta_schedule": schedule, "trained_betas": betas.tolist()}
        sched = interop.from_diffusers_config(config)
        np.testing.assert_array_equal(sched.log_alpha_bar, schedules.from_betas(betas).log_alpha_bar)
        np.testing.assert_allclose(sched.betas, betas, rtol=1e-13)


def test_rescale_betas_zero_snr_matches_lin_et_al(x64):
    for name, betas in [
        ("stable_diffusion_v1_5", np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2),
        ("ddpm_cifar10", np.linspace(1e-4, 0.02, 1000)),
    ]:
        config = {**interop.load_config(interop.example_config_path(name)), "rescale_betas_zero_snr": True}
        with pytest.warns(interop.DiffusersConversionWarning, match="-20"):  # the terminal logSNR note
            sched = interop.from_diffusers_config(config)
        # diffusers' alphas_cumprod, index k = our t - 1
        reference = lin_zero_snr_alphas_cumprod(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
        assert reference[-1] == 0.0
        # t = 1..T-1: Lin et al.'s values, 1e-12 relative on alpha_bar, plus 4 eps / r_t where
        # r_t = sqrt(alpha_bar_t) is small: schedules.zero_terminal_snr forms 1 - r_t before the
        # log, which costs eps / r_t relative on r_t (at most ~7e-12 here, at t = T-1).
        r = np.sqrt(reference[:-1])
        rtol = 1e-12 + 4 * np.finfo(np.float64).eps / r
        assert np.all(np.abs(np.asarray(sched.alpha_bar[1:-1]) / reference[:-1] - 1) <= rtol)
        np.testing.assert_allclose(sched.alpha_bar[1:-990], reference[:10], rtol=1e-12)
        # sigma^2 = 1 - alpha_bar computed naively in the reference cancels near t = 1
        # (1 - 0.9999), hence 1e-9 there.
        np.testing.assert_allclose(sched.sigma2[1:-1], 1 - reference[:-1], rtol=1e-9)
        np.testing.assert_array_equal(sched.alpha_bar[1], np.cumprod(1 - betas)[0])  # first kept
        # t = T: finite terminal logSNR (default -20) instead of diffusers' exact zero
        np.testing.assert_allclose(sched.log_snr[-1], -20.0, rtol=1e-12)
        assert 0 < float(sched.alpha_bar[-1]) < 3e-9
        custom = interop.from_diffusers_config(config, terminal_log_snr=-30.0)
        np.testing.assert_allclose(custom.log_snr[-1], -30.0, rtol=1e-12)
        np.testing.assert_array_equal(custom.alpha_bar[:-1], sched.alpha_bar[:-1])


# ----------------------------------------------------------------------------- sampling grids


def test_grids_leading_trailing_linspace():
    T = 1000
    # leading, steps_offset 1: diffusers [901, 801, ..., 101, 1]
    cfg = {"num_train_timesteps": T, "timestep_spacing": "leading", "steps_offset": 1}
    np.testing.assert_array_equal(
        interop.diffusers_config_grid(cfg, 10), [0, 2, 102, 202, 302, 402, 502, 602, 702, 802, 902]
    )
    # leading, no offset (DDIM defaults): diffusers [900, 800, ..., 100, 0]
    np.testing.assert_array_equal(
        interop.diffusers_config_grid({"_class_name": "DDIMScheduler"}, 10),
        [0, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    )
    # trailing: round(arange(1000, 0, -100)) - 1 = [999, 899, ..., 99]; steps_offset is not used
    cfg = {"timestep_spacing": "trailing", "steps_offset": 1}
    np.testing.assert_array_equal(
        interop.diffusers_config_grid(cfg, 10), [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    )
    # linspace: round(linspace(0, 999, 10)) = [0, 111, ..., 999]; steps_offset is not used
    cfg = {"timestep_spacing": "linspace", "steps_offset": 1}
    np.testing.assert_array_equal(
        interop.diffusers_config_grid(cfg, 10), [0, 1, 112, 223, 334, 445, 556, 667, 778, 889, 1000]
    )


def test_grids_uneven_division():
    # N = 7 does not divide T = 1000.
    # linspace(0, 999, 7) = [0, 166.5, 333, 499.5, 666, 832.5, 999], rounded half to even:
    # diffusers [999, 832, 666, 500, 333, 166, 0]
    np.testing.assert_array_equal(
        interop.diffusers_config_grid({"timestep_spacing": "linspace"}, 7),
        [0, 1, 167, 334, 501, 667, 833, 1000],
    )
    # trailing: round(1000 - 1000 i / 7) - 1 = [999, 856, 713, 570, 428, 285, 142]
    np.testing.assert_array_equal(
        interop.diffusers_config_grid({"timestep_spacing": "trailing"}, 7),
        [0, 143, 286, 429, 571, 714, 857, 1000],
    )
    # leading, T // N = 142, offset 1: [853, 711, 569, 427, 285, 143, 1]
    np.testing.assert_array_equal(
        interop.diffusers_config_grid({"steps_offset": 1}, 7), [0, 2, 144, 286, 428, 570, 712, 854]
    )


def test_grid_of_stable_diffusion_config():
    path = interop.example_config_path("stable_diffusion_v1_5")
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        interop.diffusers_config_grid(path, 50)
    config = {**interop.load_config(path), "set_alpha_to_one": True}
    grid = interop.diffusers_config_grid(config, 50)  # diffusers [981, 961, ..., 21, 1]
    np.testing.assert_array_equal(grid, np.concatenate([[0], np.arange(2, 983, 20)]))
    np.testing.assert_array_equal(grid, grids.diffusers_grid(1000, 50, spacing="leading", steps_offset=1))


def test_grid_of_ddpm_config():
    grid = interop.diffusers_config_grid(interop.example_config_path("ddpm_cifar10"), 50)
    np.testing.assert_array_equal(grid, np.concatenate([[0], np.arange(1, 982, 20)]))


def test_grid_bad_inputs():
    with pytest.raises(ValueError, match="timestep_spacing"):
        interop.diffusers_config_grid({"timestep_spacing": "uniform"}, 10)
    with pytest.raises(ValueError, match="num_inference_steps"):
        interop.diffusers_config_grid({"num_train_timesteps": 1000}, 1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        interop.diffusers_config_grid({"num_train_timesteps": 1000}, 0)
    with pytest.raises(ValueError, match="steps_offset"):
        interop.diffusers_config_grid({"steps_offset": 1}, 1000)  # diffusers timestep 1000 > 999
    with pytest.raises(ValueError, match="steps_offset"):
        interop.diffusers_config_grid({"steps_offset": -1}, 10)


# ----------------------------------------------------------------------------- export


def test_to_diffusers_config_contents(x64):
    sched = schedules.cosine(1000)
    config = interop.to_diffusers_config(sched, steps_offset=1, timestep_spacing="trailing")
    assert config["_class_name"] == "DDIMScheduler"
    assert config["num_train_timesteps"] == 1000
    assert config["beta_schedule"] == "linear"
    assert config["set_alpha_to_one"] is True and config["clip_sample"] is False
    assert config["rescale_betas_zero_snr"] is False and config["prediction_type"] == "epsilon"
    assert (config["steps_offset"], config["timestep_spacing"]) == (1, "trailing")
    assert len(config["trained_betas"]) == 1000
    assert all(type(b) is float for b in config["trained_betas"])
    json.dumps(config, allow_nan=False)  # plain JSON


@pytest.mark.parametrize("name", schedules.SCHEDULE_NAMES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_round_trip_exact(x64, name, zero_snr, tmp_path):
    sched = schedules.named_schedule(name, 1000)
    if zero_snr:
        sched = schedules.zero_terminal_snr(sched)
    # through a JSON string
    restored = interop.from_diffusers_config(json.loads(json.dumps(interop.to_diffusers_config(sched))))
    _assert_round_trip(sched, restored)
    # through a file written atomically
    path = interop.save_diffusers_config(sched, tmp_path / "scheduler_config.json")
    _assert_round_trip(sched, interop.from_diffusers_config(path))
    assert not [p for p in tmp_path.iterdir() if p.name != "scheduler_config.json"]


def test_round_trip_float32_is_bitwise(x32):
    for name in schedules.SCHEDULE_NAMES:
        sched = schedules.named_schedule(name, 1000)
        assert sched.dtype == jnp.float32
        restored = interop.from_diffusers_config(interop.to_diffusers_config(sched))
        np.testing.assert_array_equal(restored.log_alpha_bar, sched.log_alpha_bar)


def test_round_trip_keeps_grid_keys(tmp_path):
    sched = schedules.scaled_linear(1000)
    path = interop.save_diffusers_config(sched, tmp_path, steps_offset=1)
    assert path == tmp_path / "scheduler_config.json"
    np.testing.assert_array_equal(
        interop.diffusers_config_grid(path, 10), [0, 2, 102, 202, 302, 402, 502, 602, 702, 802, 902]
    )


def test_export_bad_inputs():
    sched = schedules.linear(100)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        interop.to_diffusers_config(sched, num_train_timesteps=50)
    with pytest.raises(ValueError, match="trained_betas"):
        interop.to_diffusers_config(sched, trained_betas=[0.1] * 100)
    with pytest.raises(ValueError, match="timestep_spacing"):
        interop.to_diffusers_config(sched, timestep_spacing="karras")
    with pytest.raises(ValueError, match="mystery_key"):
        interop.to_diffusers_config(sched, mystery_key=1)
    with pytest.raises(ValueError, match="sched"):
        interop.to_diffusers_config(np.linspace(0, 1, 10))


# ----------------------------------------------------------------------------- bad configs


def test_unknown_beta_schedule():
    with pytest.raises(ValueError, match=r"beta_schedule.*'quadratic'"):
        interop.from_diffusers_config({"beta_schedule": "quadratic"})


def test_unknown_timestep_spacing():
    with pytest.raises(ValueError, match=r"timestep_spacing.*'uniform'"):
        interop.from_diffusers_config({"timestep_spacing": "uniform"})


def test_malformed_json_file(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text('{"beta_schedule": "linear",')
    with pytest.raises(ValueError, match=r"scheduler_config\.json.*not valid JSON"):
        interop.from_diffusers_config(path)
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="JSON object"):
        interop.load_config(path)
    path.write_text("[" * 200_000 + "]" * 200_000)  # was a RecursionError traceback
    with pytest.raises(
        ArgumentError, match=r"^config: '.*scheduler_config\.json' is nested too deeply to be a scheduler"
    ):
        interop.load_config(path)
    with pytest.raises(ArgumentError, match="nested too deeply"):
        interop.from_diffusers_config(path)


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "scheduler_config.json"
    with pytest.raises(ValueError, match=r"config: file not found.*nowhere"):
        interop.from_diffusers_config(missing)
    with pytest.raises(ValueError, match="config"):
        interop.load_config(42)


def test_trained_betas_wrong_length():
    with pytest.raises(ValueError, match=r"trained_betas.*num_train_timesteps = 1000"):
        interop.from_diffusers_config({"trained_betas": [0.01] * 999})
    with pytest.raises(ValueError, match=r"trained_betas.*num_train_timesteps = 10"):
        interop.from_diffusers_config({"num_train_timesteps": 10, "trained_betas": [0.01] * 11})


def test_trained_betas_out_of_range():
    with pytest.raises(ValueError, match=r"trained_betas\[3\]"):
        interop.from_diffusers_config({"num_train_timesteps": 5, "trained_betas": [0.1, 0.2, 0.3, 1.5, 0.5]})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):  # terminal beta 1: a hint
        interop.from_diffusers_config({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 1.0]})
    with pytest.raises(ValueError, match="trained_betas"):
        interop.from_diffusers_config({"num_train_timesteps": 2, "trained_betas": ["a", "b"]})


def test_bad_values_name_the_key():
    cases = [
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"num_train_timesteps": 1000.0}, "num_train_timesteps"),
        ({"beta_start": -0.1}, "beta_start"),
        ({"beta_end": "0.02"}, "beta_end"),
        ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr"),
        ({"set_alpha_to_one": 1}, "set_alpha_to_one"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas"),
        ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
        ({"shift": 3.0}, "shift"),  # a flow-matching config must not become a DDPM schedule
        ({"sigma_max": 80.0}, "sigma_max"),
    ]
    for config, key in cases:
        with pytest.raises(ValueError, match=key):
            interop.from_diffusers_config(config)


def test_ignored_and_default_only_keys(x64):
    config = {
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.30.0",
        "prediction_type": "v_prediction",
        "clip_sample": True,
        "thresholding": False,
        "variance_type": None,
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "use_karras_sigmas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": float("-inf"),
    }
    sched = interop.from_diffusers_config(config)
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.linear(1000).log_alpha_bar)
    # an unknown key is accepted once named in ignore=
    interop.from_diffusers_config({"brand_new_option": 1, "beta_schedule": "linear"}, ignore=("brand_new_option",))
    with pytest.raises(ValueError, match="brand_new_option"):
        interop.from_diffusers_config({"brand_new_option": 1})


def test_set_alpha_to_one_false_keeps_the_schedule(x64):
    a = interop.from_diffusers_config({"_class_name": "DDIMScheduler", "set_alpha_to_one": False})
    b = interop.from_diffusers_config({"_class_name": "DDIMScheduler", "set_alpha_to_one": True})
    np.testing.assert_array_equal(a.log_alpha_bar, b.log_alpha_bar)
