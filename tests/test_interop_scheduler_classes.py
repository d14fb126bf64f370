"""Which diffusers scheduler configs are read: DDPM-family classes only, flow matching refused by name.

The DDIM-PIFS geometry is defined for schedules alpha_bar_t = prod_{s<=t} (1 - beta_s); a
flow-matching config (Stable Diffusion 3, Flux) or an empty config must not silently become the
default DDPM linear schedule. Reference schedules are diffusers' formulas re-done in float64 NumPy.
"""

import json
import warnings

import numpy as np
import pytest

from pifs_jax import interop, schedules
from pifs_jax.errors import ArgumentError

# The published scheduler configs of Stable Diffusion 3 and Flux.1 (scheduler/scheduler_config.json).
SD3_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.29.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
FLUX_CONFIG = {
    **SD3_CONFIG,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# Stable Diffusion XL base's published EulerDiscreteScheduler config.
SDXL_EULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

FLOW_REASON = r"x_t = \(1 - t\) x_0 \+ t eps"


def _scaled_linear_log_alpha_bar(T=1000, beta_start=0.00085, beta_end=0.012):
    betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])


# ----------------------------------------------------------------------------- flow matching


@pytest.mark.parametrize("config", [SD3_CONFIG, FLUX_CONFIG], ids=["sd3", "flux"])
@pytest.mark.parametrize("read", ["schedule", "grid"])
def test_flow_matching_configs_are_refused_by_class_name(config, read, tmp_path):
    with pytest.raises(ArgumentError, match="FlowMatchEulerDiscreteScheduler' is a flow-matching scheduler") as info:
        if read == "schedule":
            interop.from_diffusers_config(config)
        else:
            interop.diffusers_config_grid(config, 10)
    error = info.value
    assert error.argument == "_class_name"
    assert "prod_{s<=t} (1 - beta_s)" in error.detail and "(1 - t) x_0 + t eps" in error.detail
    assert "ignore=" not in error.detail  # no hint that would read it as a DDPM schedule
    # also from a file, whose name the message gives
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ArgumentError, match=r"flow-matching.*scheduler_config\.json"):
        interop.from_diffusers_config(path)


@pytest.mark.parametrize(
    "name",
    [
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
        "FlowMatchLCMScheduler",
        "MyFlowMatchScheduler",
    ],
)
def test_every_flow_match_class_is_refused(name):
    with pytest.raises(ArgumentError, match=f"^_class_name: '{name}' is a flow-matching scheduler.*{FLOW_REASON}"):
        interop.from_diffusers_config({"_class_name": name, "beta_schedule": "linear"})


def test_flow_matching_class_is_refused_even_when_ignored():
    with pytest.raises(ArgumentError, match="flow-matching"):
        interop.from_diffusers_config(SD3_CONFIG, ignore=("_class_name", "shift"))


@pytest.mark.parametrize("key", ["shift", "base_shift", "max_image_seq_len", "sigma_data", "snr_shift_scale"])
def test_other_family_keys_are_refused_without_an_ignore_hint(key):
    # SD3's config without its _class_name: refused by the key, not read as DDPM linear
    with pytest.raises(ArgumentError, match=f"^{key}: is a key of .* scheduler configs") as info:
        interop.from_diffusers_config({"num_train_timesteps": 1000, key: 3.0})
    assert "ignore=" not in info.value.detail
    assert "prod_{s<=t} (1 - beta_s)" in info.value.detail
    with pytest.raises(ArgumentError, match=f"^{key}: "):  # listing it in ignore does not help
        interop.from_diffusers_config({"num_train_timesteps": 1000, key: 3.0}, ignore=(key,))


def test_sd3_config_without_class_name_is_refused_by_shift():
    config = {k: v for k, v in SD3_CONFIG.items() if k != "_class_name"}
    with pytest.raises(ArgumentError, match=r"^shift: is a key of flow-matching scheduler configs"):
        interop.from_diffusers_config(config)


def test_flow_prediction_is_refused():
    # Wan-style UniPC config: a DDPM-family class driven in flow-matching mode
    config = {
        "_class_name": "UniPCMultistepScheduler",
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
    }
    with pytest.raises(ArgumentError, match=f"^prediction_type: 'flow_prediction'.*{FLOW_REASON}"):
        interop.from_diffusers_config(config)
    with pytest.raises(ArgumentError, match=r"^use_flow_sigmas: "):
        interop.from_diffusers_config({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True})
    with pytest.raises(ArgumentError, match=r"^flow_shift: "):
        interop.from_diffusers_config({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0})


# ----------------------------------------------------------------------------- other classes


@pytest.mark.parametrize(
    "name",
    ["EDMEulerScheduler", "ScoreSdeVeScheduler", "CogVideoXDDIMScheduler", "DDIMInverseScheduler", "NotAScheduler"],
)
def test_unsupported_classes_are_refused_by_name(name):
    with pytest.raises(ArgumentError, match=f"^_class_name: '{name}' is not supported") as info:
        interop.from_diffusers_config({"_class_name": name, "beta_schedule": "linear"})
    assert "DDIMScheduler, " in info.value.detail  # lists what is read
    assert "'_class_name': 'DDIMScheduler'" in info.value.detail  # the knowing way round


def test_class_name_must_be_a_string():
    with pytest.raises(ArgumentError, match=r"^_class_name: expected the name of a diffusers scheduler class, got 3"):
        interop.from_diffusers_config({"_class_name": 3, "beta_schedule": "linear"})


@pytest.mark.parametrize("name", interop.DDPM_FAMILY_SCHEDULERS)
def test_ddpm_family_classes_are_read(x64, name):
    config = {
        "_class_name": name,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
    }
    sched = interop.from_diffusers_config(config)
    # diffusers' cumprod(1 - betas) in float64: 1e-12 on log alpha_bar (absolute, |log ab| <= 7)
    np.testing.assert_allclose(sched.log_alpha_bar, _scaled_linear_log_alpha_bar(), rtol=0, atol=1e-12)


def test_classes_with_other_defaults_must_spell_the_schedule_out(x64):
    # LCMScheduler's own defaults are scaled_linear from 0.00085 to 0.012, not DDIMScheduler's:
    # a partial LCM config is refused instead of being filled with the wrong defaults.
    with pytest.raises(
        ArgumentError,
        match=r"^num_train_timesteps: missing \(or null\) in a LCMScheduler config.*"
        "beta_schedule, beta_start, beta_end",
    ):
        interop.from_diffusers_config({"_class_name": "LCMScheduler"})
    with pytest.raises(ArgumentError, match=r"^beta_start: missing .* HeunDiscreteScheduler"):
        interop.from_diffusers_config(
            {
                "_class_name": "HeunDiscreteScheduler",
                "num_train_timesteps": 1000,
                "beta_schedule": "linear",
                "beta_start": None,
                "beta_end": 0.012,
            }
        )
    lcm = {
        "_class_name": "LCMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "original_inference_steps": 50,
        "timestep_scaling": 10.0,
    }
    np.testing.assert_allclose(
        interop.from_diffusers_config(lcm).log_alpha_bar, _scaled_linear_log_alpha_bar(), rtol=0, atol=1e-12
    )
    # squaredcos_cap_v2 takes no beta range; trained_betas take none either
    interop.from_diffusers_config(
        {"_class_name": "TCDScheduler", "num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2"}
    )
    interop.from_diffusers_config(
        {"_class_name": "TCDScheduler", "num_train_timesteps": 2, "trained_betas": [0.1, 0.2]}
    )
    # classes whose defaults are DDIMScheduler's need no schedule key
    linear = schedules.linear(1000).log_alpha_bar
    for name in ("DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"):
        np.testing.assert_array_equal(interop.from_diffusers_config({"_class_name": name}).log_alpha_bar, linear)


def test_real_sdxl_euler_config_is_read(x64):
    sched = interop.from_diffusers_config(SDXL_EULER_CONFIG)
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.scaled_linear(1000).log_alpha_bar)
    np.testing.assert_allclose(sched.log_alpha_bar, _scaled_linear_log_alpha_bar(), rtol=0, atol=1e-12)
    grid = interop.diffusers_config_grid({**SDXL_EULER_CONFIG, "set_alpha_to_one": True}, 10)
    np.testing.assert_array_equal(grid, [0, 2, 102, 202, 302, 402, 502, 602, 702, 802, 902])


def test_export_refuses_a_flow_matching_class_name():
    with pytest.raises(ArgumentError, match=r"^_class_name: 'FlowMatchEulerDiscreteScheduler'"):
        interop.to_diffusers_config(schedules.linear(10), _class_name="FlowMatchEulerDiscreteScheduler")
    assert (
        interop.to_diffusers_config(schedules.linear(10), _class_name="DDPMScheduler")["_class_name"] == "DDPMScheduler"
    )


# ----------------------------------------------------------------------------- configs without a class


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"_diffusers_version": "0.30.0"},
        {"trained_betas": None},
        {"prediction_type": "epsilon", "clip_sample": False},
    ],
)
def test_config_that_identifies_no_schedule_is_refused(config):
    with pytest.raises(ArgumentError, match=r"^config: names no scheduler class .*DDIMScheduler's defaults") as info:
        interop.from_diffusers_config(config)
    assert info.value.argument == "config"


def test_grid_key_is_not_a_schedule_key():
    # set_alpha_to_one says nothing about alpha_bar: the schedule would be all defaults
    with pytest.raises(ArgumentError, match=r"^config: names no scheduler class"):
        interop.from_diffusers_config({"set_alpha_to_one": False})
    # ... but it is what the grid reads
    np.testing.assert_array_equal(
        interop.diffusers_config_grid({"timestep_spacing": "trailing"}, 10),
        [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
    )
    with pytest.raises(ArgumentError, match=r"^config: names no scheduler class"):
        interop.diffusers_config_grid({}, 10)


def test_one_schedule_key_or_a_class_name_is_enough(x64):
    linear = schedules.linear(1000).log_alpha_bar
    for config in (
        {"beta_schedule": "linear"},
        {"num_train_timesteps": 1000},
        {"_class_name": "DDIMScheduler"},
        {"rescale_betas_zero_snr": False},
    ):
        np.testing.assert_array_equal(interop.from_diffusers_config(config).log_alpha_bar, linear)
    naive = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDIMScheduler's defaults, float64
    np.testing.assert_allclose(
        interop.from_diffusers_config({"_class_name": "DDIMScheduler"}).alpha_bar[1:], naive, rtol=1e-12
    )


# ----------------------------------------------------------------------------- null means default


def test_null_values_mean_default(x64):
    config = {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": None,
        "beta_schedule": None,
        "beta_start": None,
        "beta_end": None,
        "trained_betas": None,
        "rescale_betas_zero_snr": None,
        "clip_sample_range": None,
        "timestep_spacing": None,
        "steps_offset": None,
        "set_alpha_to_one": None,
        "prediction_type": None,
        "sigma_min": None,
        "sigma_max": None,
        "shift": None,
        "future_option_of_diffusers": None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rescale_betas_zero_snr: null is false: no note
        sched = interop.from_diffusers_config(config)
    np.testing.assert_array_equal(sched.log_alpha_bar, schedules.linear(1000).log_alpha_bar)
    np.testing.assert_array_equal(
        interop.diffusers_config_grid(config, 10), [0, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    )


def test_unknown_key_hint_is_conditional():
    with pytest.raises(ArgumentError, match=r"^brand_new_option: unknown scheduler config key") as info:
        interop.from_diffusers_config({"_class_name": "DDIMScheduler", "brand_new_option": 1})
    assert "if it changes neither alpha_bar nor the DDIM grid, pass ignore=('brand_new_option',)" in info.value.detail
    interop.from_diffusers_config({"_class_name": "DDIMScheduler", "brand_new_option": 1}, ignore=("brand_new_option",))


# ----------------------------------------------------------------------------- zero terminal SNR


def test_zero_terminal_snr_replacement_is_announced(x64):
    config = {
        "_class_name": "DDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "rescale_betas_zero_snr": True,
    }
    with pytest.warns(
        interop.DiffusersConversionWarning,
        match=r"rescale_betas_zero_snr: true: diffusers sets alpha_bar_T = 0 .*finite at -20",
    ) as record:
        sched = interop.from_diffusers_config(config)
    assert len(record) == 1
    assert issubclass(interop.DiffusersConversionWarning, UserWarning)
    np.testing.assert_allclose(sched.log_snr[-1], -20.0, rtol=1e-12)
    # choosing the value explicitly silences the note and gives the same schedule for -20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = interop.from_diffusers_config(config, terminal_log_snr=-20.0)
        other = interop.from_diffusers_config(config, terminal_log_snr=-25.0)
        interop.from_diffusers_config({**config, "rescale_betas_zero_snr": False})
    np.testing.assert_array_equal(explicit.log_alpha_bar, sched.log_alpha_bar)
    np.testing.assert_allclose(other.log_snr[-1], -25.0, rtol=1e-12)


def test_zero_terminal_snr_note_names_the_file(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text('{"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": true}')
    with pytest.warns(interop.DiffusersConversionWarning, match="scheduler_config.json"):
        interop.from_diffusers_config(path)
