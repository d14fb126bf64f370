"""diffusers ``scheduler_config.json`` in and out, without torch or diffusers installed.

Reading: :func:`from_diffusers_config` turns a scheduler config (a dict, a JSON file or a
folder holding ``scheduler_config.json``) into a :class:`~pifs_jax.schedules.Schedule` with the
same ``alpha_bar`` diffusers builds, and :func:`diffusers_config_grid` gives the sampling grid
``DDIMScheduler.from_config(config).set_timesteps(N)`` would walk, in this package's indexing
(diffusers timestep ``k`` is our ``t = k + 1``; docs/theory.md section 1).

Writing: :func:`to_diffusers_config` / :func:`save_diffusers_config` export any Schedule as a
``DDIMScheduler`` config whose ``trained_betas`` reproduce it (``beta_t = -expm1(diff(log
alpha_bar))``, in float64), so a schedule designed here can be loaded by diffusers.

Which scheduler classes are read: ``_class_name`` is read first. The DDIM-PIFS geometry is
defined for DDPM-family schedules, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (docs/theory.md
section 2), so only the diffusers classes that build ``alphas_cumprod = cumprod(1 - betas)`` from
``beta_schedule`` / ``beta_start`` / ``beta_end`` / ``trained_betas`` are accepted
(:data:`DDPM_FAMILY_SCHEDULERS`: DDPM, DDIM, PNDM, the DPM-Solvers, Euler, Heun, KDPM2, LMS,
UniPC, DEIS, SA-Solver, LCM, TCD); their eps-, v- or x0-predicting networks all use those same
``alphas_cumprod``. A flow-matching class (any ``_class_name`` containing ``FlowMatch``, e.g. the
``FlowMatchEulerDiscreteScheduler`` of Stable Diffusion 3 and Flux) is refused by name: it
interpolates ``x_t = (1 - t) x_0 + t eps`` and has no such schedule. Any other class (EDM,
score-SDE, inverse or CogVideoX schedulers, ...) is refused by name too; a config of a class that
does build its betas exactly like ``DDIMScheduler`` can be read knowingly as
``{**config, "_class_name": "DDIMScheduler"}``. A config without ``_class_name`` (a hand-written
dict) must set at least one key the function reads (:data:`SCHEDULE_KEYS` for
:func:`from_diffusers_config`; :data:`SCHEDULE_KEYS` or :data:`GRID_KEYS` for
:func:`diffusers_config_grid`), so an empty ``{}`` (or a dict of bookkeeping keys only) is refused
rather than read as DDIMScheduler's defaults. A key whose value is ``null`` (``None``) means the
class's default, as in diffusers.

Which keys mean what (the sets below are exported as :data:`SCHEDULE_KEYS`,
:data:`GRID_KEYS`, :data:`IGNORED_KEYS`, :data:`DEFAULT_ONLY_KEYS` and
:data:`OTHER_FAMILY_KEYS`):

- **Schedule geometry** (:data:`SCHEDULE_KEYS`): ``num_train_timesteps``, ``beta_start``,
  ``beta_end``, ``beta_schedule`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``,
  ``sigmoid``), ``trained_betas`` (takes precedence over ``beta_schedule``, as in diffusers) and
  ``rescale_betas_zero_snr``. Missing keys take ``DDIMScheduler``'s defaults (1000 steps,
  ``linear`` from 1e-4 to 0.02), which are also those of DDPM, PNDM, the multistep and
  single-step DPM-Solvers, Euler, Euler ancestral, LMS, UniPC and DEIS; a config of another class
  (LCM, TCD, Heun, KDPM2, DPM-Solver SDE, SA-Solver: their defaults differ or are not checked
  here) must give ``num_train_timesteps`` and the beta keys its schedule uses (a config saved by
  diffusers has them all).
  ``rescale_betas_zero_snr: true`` keeps the terminal logSNR finite (default -20) instead of
  diffusers' ``alpha_bar_T = 0`` and says so with a :class:`DiffusersConversionWarning` unless
  ``terminal_log_snr`` is passed explicitly. diffusers builds its betas in float32; here they are
  built in float64 from the same formulas, so this package's schedule is the exact one diffusers
  rounds.
- **Sampling grid** (:data:`GRID_KEYS`): ``timestep_spacing`` (default ``leading``),
  ``steps_offset`` (default 0, used by ``leading`` only, as in diffusers) and
  ``set_alpha_to_one`` (default ``true``). ``set_alpha_to_one: false`` makes diffusers' last DDIM
  step land on ``alphas_cumprod[0]`` (our ``t = 1``) instead of ``alpha_bar = 1``; this package's
  chains always end on ``tau_0 = 0`` (docs/theory.md section 1), so :func:`diffusers_config_grid`
  rejects it (the training-grid schedule does not depend on it, so :func:`from_diffusers_config`
  accepts it). Stable Diffusion's published PNDM config carries ``set_alpha_to_one: false``; pass
  ``{**config, "set_alpha_to_one": True}`` to get its DDIM grid ending on clean data.
- **Ignored** (:data:`IGNORED_KEYS`): keys that change neither ``alpha_bar`` nor the DDIM
  sampling grid: bookkeeping (``_diffusers_version``, ...), the network's output
  parameterisation (``prediction_type`` ``epsilon``, ``v_prediction`` or ``sample``; a v- or
  x0-predicting network needs converting to eps in its denoiser adapter, the schedule is the
  same; ``flow_prediction`` is refused, it is a flow-matching network), sample post-processing
  (``clip_sample``, ``thresholding``, ...), stochastic-sampler and solver settings
  (``variance_type``, ``solver_order``, ``skip_prk_steps``, ...). The grid is always DDIM's,
  whatever DDPM-family ``_class_name`` the config names: this package samples with
  deterministic DDIM.
- **Default only** (:data:`DEFAULT_ONLY_KEYS`): alternative sampling grids or non-DDPM
  parameterisations (``use_karras_sigmas``, ``use_flow_sigmas``, ``final_sigmas_type``, ...)
  are accepted at their diffusers default and rejected otherwise.
- **Other families** (:data:`OTHER_FAMILY_KEYS`): keys of flow-matching and EDM / sigma-space
  schedulers (``shift``, ``base_shift``, ``sigma_data``, ...). With a non-null value they are
  always refused, also when listed in ``ignore``: their config does not describe a DDPM-family
  schedule, and ignoring the key would read it as one.

Any other key raises ``ValueError`` naming it; pass ``ignore=("key", ...)`` to accept a key
knowingly that changes neither ``alpha_bar`` nor the DDIM grid.

Example:
  >>> sched = from_diffusers_config(example_config_path("stable_diffusion_v1_5"))
  >>> grid = diffusers_config_grid({**load_config(example_config_path("stable_diffusion_v1_5")),
  ...                               "set_alpha_to_one": True}, 50)   # [0, 2, 22, ..., 982]
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from pifs_jax import schedules as _schedules
from pifs_jax._validation import describe, is_concrete, read_json_object
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import TIMESTEP_SPACINGS, diffusers_grid
from pifs_jax.results import atomic_write_text

__all__ = [
    "DDPM_FAMILY_SCHEDULERS",
    "DEFAULT_ONLY_KEYS",
    "DIFFUSERS_BETA_SCHEDULES",
    "EXAMPLE_CONFIGS",
    "GRID_KEYS",
    "IGNORED_KEYS",
    "OTHER_FAMILY_KEYS",
    "SCHEDULE_KEYS",
    "DiffusersConversionWarning",
    "diffusers_config_grid",
    "example_config_path",
    "from_diffusers_config",
    "load_config",
    "save_diffusers_config",
    "to_diffusers_config",
]


class DiffusersConversionWarning(UserWarning):
    """A diffusers config was read into a schedule that deliberately differs from diffusers' own.

    Emitted by :func:`from_diffusers_config` for ``rescale_betas_zero_snr: true``: diffusers gets
    ``alpha_bar_T = 0`` (infinite negative terminal logSNR), this package keeps ``logSNR_T`` at a
    finite ``terminal_log_snr`` (default -20) because the eps-parameterised DDIM step cannot start
    from ``alpha_bar_T = 0``. Silence it by passing ``terminal_log_snr`` explicitly, or with
    ``warnings.filterwarnings("ignore", category=DiffusersConversionWarning)``.
    """


#: The diffusers scheduler classes whose configs this package reads. Each builds its betas from
#: ``beta_schedule`` / ``beta_start`` / ``beta_end`` / ``trained_betas`` (and
#: ``rescale_betas_zero_snr`` where it has it) and ``alphas_cumprod = cumprod(1 - betas)``, the
#: DDPM-family schedule every eps-, v- or x0-predicting network of the class is trained on.
DDPM_FAMILY_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "DDPMParallelScheduler",
    "DDIMParallelScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "SASolverScheduler",
    "LCMScheduler",
    "TCDScheduler",
)

# Classes whose defaults for the schedule keys are not DDIMScheduler's (1000 steps, linear betas
# from 1e-4 to 0.02), or were not checked: LCMScheduler (scaled_linear from 0.00085 to 0.012),
# HeunDiscreteScheduler (linear from 0.00085 to 0.012). Their configs must spell the schedule out.
_OWN_DEFAULT_CLASSES = (
    "DPMSolverSDEScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "SASolverScheduler",
    "LCMScheduler",
    "TCDScheduler",
)
_DDIM_DEFAULT_CLASSES = tuple(c for c in DDPM_FAMILY_SCHEDULERS if c not in _OWN_DEFAULT_CLASSES)

#: Keys of other model families, name -> family. Refused with a non-null value, even in ``ignore``.
OTHER_FAMILY_KEYS = {
    "shift": "flow-matching",
    "base_shift": "flow-matching",
    "max_shift": "flow-matching",
    "base_image_seq_len": "flow-matching",
    "max_image_seq_len": "flow-matching",
    "invert_sigmas": "flow-matching",
    "shift_terminal": "flow-matching",
    "stochastic_sampling": "flow-matching",
    "sigma_data": "EDM",
    "sigma_schedule": "EDM",
    "rho": "EDM",
    "snr_shift_scale": "CogVideoX (shifted-SNR)",
}

_FLOW_MATCHING_REASON = (
    "the DDIM-PIFS geometry is defined for DDPM-family schedules with alpha_bar_t = "
    "prod_{s<=t} (1 - beta_s) (docs/theory.md section 2); a flow-matching scheduler interpolates "
    "x_t = (1 - t) x_0 + t eps and has no such schedule, so its config cannot be read as one"
)

#: ``beta_schedule`` values this package reproduces exactly.
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")

#: Keys that define ``alpha_bar`` on the training grid.
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)

#: Keys that define the DDIM sampling grid.
GRID_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one")

#: Keys accepted and ignored, since they change neither ``alpha_bar`` nor the DDIM sampling grid.
IGNORED_KEYS = (
    # bookkeeping written by diffusers (_class_name is read: it selects the model family)
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
    # network output parameterisation (eps / v / x0 / sample): same schedule; the flow-matching
    # value "flow_prediction" is refused before keys are sorted
    "prediction_type",
    # post-processing of the predicted clean sample
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    # stochastic samplers and higher-order solvers (this package runs deterministic DDIM)
    "variance_type",
    "skip_prk_steps",
    "solver_order",
    "solver_type",
    "algorithm_type",
    "lower_order_final",
    "euler_at_final",
    "predict_x0",
    "solver_p",
    "disable_corrector",
    "interpolation_type",
    "timestep_type",
    "timestep_scaling",
    "original_inference_steps",
    "noise_sampler_seed",
    "predictor_order",
    "corrector_order",
)

#: Keys accepted only at their diffusers default (they select other grids or parameterisations).
DEFAULT_ONLY_KEYS = {
    "use_karras_sigmas": "false",
    "use_exponential_sigmas": "false",
    "use_beta_sigmas": "false",
    "use_lu_lambdas": "false",
    "use_flow_sigmas": "false",
    "use_dynamic_shifting": "false",
    "final_sigmas_type": '"zero"',
    "lambda_min_clipped": "-Infinity",
    "flow_shift": "1.0",
    "sigma_min": "null",
    "sigma_max": "null",
    # DPMSolverMultistepScheduler saves it at its default; it acts only with use_dynamic_shifting
    "time_shift_type": '"exponential"',
}

#: Bundled example configs, name -> file in ``pifs_jax/data_files``.
EXAMPLE_CONFIGS = {
    "ddpm_cifar10": "ddpm_cifar10_scheduler_config.json",
    "stable_diffusion_v1_5": "stable_diffusion_v1_5_scheduler_config.json",
}

_CONFIG_FILE_NAME = "scheduler_config.json"

# Terminal logSNR that replaces diffusers' -inf under rescale_betas_zero_snr.
_DEFAULT_TERMINAL_LOG_SNR = -20.0

# DDIMScheduler's defaults for the keys this module reads.
_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "set_alpha_to_one": True,
}


# ----------------------------------------------------------------------------- reading


def example_config_path(name: str) -> Path:
    """Path of a bundled diffusers scheduler config.

    Args:
      name: ``"ddpm_cifar10"`` (``google/ddpm-cifar10-32``: DDPMScheduler, ``linear`` betas from
        1e-4 to 0.02, 1000 steps) or ``"stable_diffusion_v1_5"`` (Stable Diffusion v1.5:
        PNDMScheduler, ``scaled_linear`` betas from 0.00085 to 0.012, 1000 steps,
        ``steps_offset`` 1, ``set_alpha_to_one`` false).

    Returns:
      The file's path (inside the installed package).
    """
    if name not in EXAMPLE_CONFIGS:
        raise ArgumentError("name", f"expected one of {sorted(EXAMPLE_CONFIGS)}, got {name!r}")
    resource = resources.files("pifs_jax.data_files").joinpath(EXAMPLE_CONFIGS[name])
    return Path(os.fspath(cast("os.PathLike[str]", resource)))  # installed as files, not in a zip


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A diffusers scheduler config as a plain dict.

    Args:
      config: a mapping (copied), a path to a ``scheduler_config.json`` file, or a folder that
        holds one (e.g. the ``scheduler/`` folder of a downloaded pipeline).

    Returns:
      A new ``dict``. ``NaN``/``Infinity`` literals that diffusers may write are accepted.

    Raises:
      ValueError: the file is missing or unreadable, is not valid JSON, is nested too deeply to
        parse, or does not hold a JSON object; the message names the file.
    """
    return read_json_object(config, file_name=_CONFIG_FILE_NAME, what="a scheduler config")[0]


class _Parsed(NamedTuple):
    """A validated config: every key this module reads, with DDIMScheduler defaults filled in."""

    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    trained_betas: np.ndarray | None
    rescale_betas_zero_snr: bool
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool
    where: str  # " (in 'file')" for messages, or ""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_default_only(key: str, value: Any, where: str) -> None:
    if key == "final_sigmas_type":
        ok = value is None or value == "zero"
    elif key == "time_shift_type":
        ok = value is None or value == "exponential"
    elif key == "lambda_min_clipped":
        ok = value is None or (_is_real(value) and float(value) == -math.inf)
    elif key == "flow_shift":
        ok = value is None or (_is_real(value) and float(value) == 1.0)
    elif key in ("sigma_min", "sigma_max"):
        ok = value is None
    else:
        ok = value is None or value is False
    if not ok:
        raise ArgumentError(
            key,
            f"only the diffusers default {DEFAULT_ONLY_KEYS[key]} can be honoured (it selects "
            f"another sampling grid or parameterisation), got {value!r}{where}",
        )


def _check_family(raw: Mapping[str, Any], where: str) -> None:
    """Refuse a config whose ``_class_name`` or ``prediction_type`` is not of the DDPM family."""
    class_name = raw.get("_class_name")
    if class_name is not None:
        if not isinstance(class_name, str):
            raise ArgumentError(
                "_class_name", f"expected the name of a diffusers scheduler class, got {class_name!r}{where}"
            )
        if "FlowMatch" in class_name:
            raise ArgumentError(
                "_class_name",
                f"{class_name!r} is a flow-matching scheduler and is not supported{where}: {_FLOW_MATCHING_REASON}",
            )
        if class_name not in DDPM_FAMILY_SCHEDULERS:
            raise ArgumentError(
                "_class_name",
                f"{class_name!r} is not supported{where}: the DDIM-PIFS geometry is defined "
                "for DDPM-family schedules with alpha_bar_t = prod_{s<=t} (1 - beta_s) (docs/theory.md "
                "section 2), and this package reads only the diffusers classes known to build one, "
                f"pifs_jax.interop.DDPM_FAMILY_SCHEDULERS ({', '.join(DDPM_FAMILY_SCHEDULERS)}). "
                "If this class builds alphas_cumprod = cumprod(1 - betas) from num_train_timesteps, "
                "beta_schedule, beta_start, beta_end and trained_betas exactly as DDIMScheduler does, "
                "pass {**config, '_class_name': 'DDIMScheduler'}",
            )
    if raw.get("prediction_type") == "flow_prediction":
        raise ArgumentError(
            "prediction_type",
            f"'flow_prediction' is a flow-matching network's output and is not "
            f"supported{where}: {_FLOW_MATCHING_REASON}",
        )


def _check_schedule_spelled_out(raw: Mapping[str, Any], where: str) -> None:
    """A class whose schedule defaults are not DDIMScheduler's must set the keys its schedule uses."""
    class_name = raw.get("_class_name")
    if class_name is None or class_name in _DDIM_DEFAULT_CLASSES:
        return
    needed = ["num_train_timesteps"]
    if raw.get("trained_betas") is None:
        needed.append("beta_schedule")
        if raw.get("beta_schedule") != "squaredcos_cap_v2":
            needed += ["beta_start", "beta_end"]
    missing = [key for key in needed if raw.get(key) is None]
    if missing:
        raise ArgumentError(
            missing[0],
            f"missing (or null) in a {class_name} config{where}: its diffusers defaults for "
            "the schedule differ from DDIMScheduler's or are not known here, and DDIMScheduler's are the "
            "only defaults this package fills in; "
            f"give {', '.join(missing)} explicitly (a config saved by diffusers has them all)",
        )


def _parse(config: Any, ignore: Iterable[str], reads: tuple = SCHEDULE_KEYS) -> _Parsed:
    """Load, check the class and every key, fill in DDIMScheduler defaults.

    ``reads``: the keys the caller's result depends on; a config without ``_class_name`` must set
    at least one of them (non-null), or it would be read entirely from defaults. A config of a
    class outside ``_DDIM_DEFAULT_CLASSES`` must set the schedule keys it uses.
    """
    where = ""
    if not isinstance(config, Mapping):
        where = f" (in {str(config)!r})"
    raw = load_config(config)
    _check_family(raw, where)
    _check_schedule_spelled_out(raw, where)
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignored = set(IGNORED_KEYS) | set(ignore)
    for key, value in raw.items():
        if key in SCHEDULE_KEYS or key in GRID_KEYS or key == "_class_name":
            continue
        if key in OTHER_FAMILY_KEYS:
            if value is None:  # null: the default, i.e. not used
                continue
            raise ArgumentError(
                key,
                f"is a key of {OTHER_FAMILY_KEYS[key]} scheduler configs (value {value!r:.100}){where}, "
                "which define no DDPM-family schedule alpha_bar_t = prod_{s<=t} (1 - beta_s) "
                "(docs/theory.md section 2); this config does not describe a schedule this package "
                "can read, and ignoring the key would read it as the wrong one",
            )
        if key in ignored:
            continue
        if key in DEFAULT_ONLY_KEYS:
            _check_default_only(key, value, where)
            continue
        if value is None:  # null: diffusers' default for the key, as for every key
            continue
        raise ArgumentError(
            key,
            f"unknown scheduler config key (value {value!r:.100}){where}; the keys this package "
            "reads, ignores or accepts at their default are pifs_jax.interop.SCHEDULE_KEYS, GRID_KEYS, "
            f"IGNORED_KEYS and DEFAULT_ONLY_KEYS; if it changes neither alpha_bar nor the DDIM grid, "
            f"pass ignore=({key!r},) to accept it knowingly",
        )
    cfg = {k: (_DEFAULTS[k] if raw.get(k) is None else raw[k]) for k in _DEFAULTS}
    # diffusers writes "trained_betas": null; None means "use beta_schedule".
    cfg["trained_betas"] = raw.get("trained_betas")

    T = cfg["num_train_timesteps"]
    if not _is_int(T) or T < 1:
        raise ArgumentError("num_train_timesteps", f"expected an integer >= 1, got {T!r}{where}")
    T = int(T)

    for key in ("rescale_betas_zero_snr", "set_alpha_to_one"):
        if not isinstance(cfg[key], (bool, np.bool_)):
            raise ArgumentError(key, f"expected true or false, got {cfg[key]!r}{where}")

    trained = cfg["trained_betas"]
    if trained is not None:
        try:
            trained = np.asarray(trained, dtype=np.float64)
        except (TypeError, ValueError):
            raise ArgumentError(
                "trained_betas",
                f"expected a list of {T} numbers (num_train_timesteps), got {cfg['trained_betas']!r:.200}{where}",
            ) from None
        if trained.ndim != 1 or trained.shape[0] != T:
            raise ArgumentError(
                "trained_betas",
                f"expected a list of num_train_timesteps = {T} numbers, got shape {trained.shape}{where}",
            )
        bad = ~np.isfinite(trained) | (trained <= 0) | (trained >= 1)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            hint = ""
            if i == T - 1 and trained[i] == 1.0:
                hint = (
                    " (a terminal beta of 1 is zero terminal SNR, which the eps-parameterised DDIM "
                    "step cannot start from; give the betas before rescaling and set "
                    "rescale_betas_zero_snr: true)"
                )
            raise ArgumentError(
                "trained_betas", f"every beta must lie in (0, 1), got trained_betas[{i}] = {trained[i]!r}{hint}{where}"
            )
    else:
        schedule = cfg["beta_schedule"]
        if schedule not in DIFFUSERS_BETA_SCHEDULES:
            raise ArgumentError(
                "beta_schedule",
                f"expected one of {', '.join(DIFFUSERS_BETA_SCHEDULES)} (or trained_betas), got {schedule!r}{where}",
            )
        if schedule != "squaredcos_cap_v2":  # betas_for_alpha_bar takes no beta range
            for key in ("beta_start", "beta_end"):
                value = cfg[key]
                if not _is_real(value) or not 0 < float(value) < 1:
                    raise ArgumentError(key, f"expected a number in (0, 1), got {value!r}{where}")

    spacing = cfg["timestep_spacing"]
    if spacing not in TIMESTEP_SPACINGS:
        raise ArgumentError(
            "timestep_spacing", f"expected one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}{where}"
        )
    offset = cfg["steps_offset"]
    if not _is_int(offset) or offset < 0:
        raise ArgumentError("steps_offset", f"expected an integer >= 0, got {offset!r}{where}")

    if raw.get("_class_name") is None and not any(raw.get(k) is not None for k in reads):
        raise ArgumentError(
            "config",
            f"names no scheduler class (_class_name) and sets none of the keys "
            f"{', '.join(reads)}{where}, so nothing in it identifies a DDPM-family schedule (it would "
            f"be read entirely from DDIMScheduler's defaults); got keys {sorted(raw)}. Add "
            "'_class_name' (e.g. 'DDIMScheduler') or the schedule keys, e.g. "
            "{'beta_schedule': 'linear', 'num_train_timesteps': 1000}",
        )

    return _Parsed(
        num_train_timesteps=T,
        beta_start=float(cfg["beta_start"]) if _is_real(cfg["beta_start"]) else math.nan,
        beta_end=float(cfg["beta_end"]) if _is_real(cfg["beta_end"]) else math.nan,
        beta_schedule=cfg["beta_schedule"],
        trained_betas=trained,
        rescale_betas_zero_snr=bool(cfg["rescale_betas_zero_snr"]),
        timestep_spacing=spacing,
        steps_offset=int(offset),
        set_alpha_to_one=bool(cfg["set_alpha_to_one"]),
        where=where,
    )


def _sigmoid_betas(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """diffusers' ``sigmoid`` betas: ``sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start``."""
    x = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    return (beta_end - beta_start) / (1.0 + np.exp(-x)) + beta_start


def from_diffusers_config(
    config: Mapping[str, Any] | str | os.PathLike,
    *,
    dtype=None,
    terminal_log_snr: float | None = None,
    ignore: Iterable[str] = (),
) -> _schedules.Schedule:
    """The noise schedule a diffusers scheduler config describes.

    With ``T = num_train_timesteps`` and betas ``beta_1..beta_T``:

    - ``trained_betas`` given: those betas (``beta_schedule`` is then not read, as in diffusers);
    - ``linear``: ``beta = linspace(beta_start, beta_end, T)`` (= :func:`~pifs_jax.linear`);
    - ``scaled_linear``: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2``
      (= :func:`~pifs_jax.scaled_linear`);
    - ``squaredcos_cap_v2``: diffusers' ``betas_for_alpha_bar`` with the cosine transform,
      ``beta_t = min(1 - f(t/T)/f((t-1)/T), 0.999)``, ``f(u) = cos^2((u + 0.008)/1.008 pi/2)``,
      which is :func:`~pifs_jax.cosine` with ``s = 0.008``, ``max_beta = 0.999``
      (``beta_start``/``beta_end`` are not used);
    - ``sigmoid`` (DDPMScheduler): ``beta = sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start``
      (unrelated to :func:`~pifs_jax.sigmoid`, Chen 2023's logSNR family);

    then ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (diffusers' ``alphas_cumprod[t-1]``). With
    ``rescale_betas_zero_snr: true`` the result goes through Lin et al.'s rescale,
    :func:`~pifs_jax.zero_terminal_snr`: ``sqrt(alpha_bar_t)`` shifted to 0 at ``T`` and scaled back
    to its value at ``t = 1``. diffusers gets ``alpha_bar_T = 0`` exactly; here the terminal value
    is kept finite at ``logSNR_T = terminal_log_snr`` (default -20, ``alpha_bar_T ~ 2.1e-9``),
    because the eps-parameterised DDIM step cannot start from ``alpha_bar_T = 0``; with the
    default, a :class:`DiffusersConversionWarning` says so (pass ``terminal_log_snr`` to choose
    the value knowingly and silence it).

    Only DDPM-family configs are read (see the module docstring): ``_class_name`` must be one of
    :data:`DDPM_FAMILY_SCHEDULERS` (a flow-matching or other class is refused by name), and a
    config without ``_class_name`` must set at least one of :data:`SCHEDULE_KEYS` (``{}`` is
    refused). ``null`` values mean the default.

    diffusers computes in float32; the betas here are computed in float64 from the same
    formulas, so this is the exact schedule and diffusers' own ``alphas_cumprod`` agrees with it
    to float32 round-off (a few 1e-6 relative after 1000 cumulative products).

    Args:
      config: a dict, a path to ``scheduler_config.json`` or a folder holding one (see
        :func:`load_config`). Missing keys take ``DDIMScheduler``'s defaults.
      dtype: dtype of the returned schedule (default float32, float64 under x64).
      terminal_log_snr: terminal logSNR used with ``rescale_betas_zero_snr`` (``None``: -20,
        with a :class:`DiffusersConversionWarning`).
      ignore: further key names to accept and ignore (see the module docstring for the keys
        read, ignored, accepted at their default only, and rejected).

    Returns:
      A :class:`~pifs_jax.schedules.Schedule` with ``T = num_train_timesteps``.

    Raises:
      ValueError: naming the key, for a ``_class_name`` outside :data:`DDPM_FAMILY_SCHEDULERS`
        (flow-matching classes with the reason), ``prediction_type: flow_prediction``, a key of
        another model family, a schedule key missing from a config of a class whose defaults
        are not DDIMScheduler's, an unknown or unsupported key, an unknown ``beta_schedule`` or
        ``timestep_spacing``, ``trained_betas`` of the wrong length or out of ``(0, 1)``;
        naming ``config`` for a config that identifies no schedule (e.g. ``{}``) or an
        unreadable file.

    Warns:
      DiffusersConversionWarning: ``rescale_betas_zero_snr: true`` with the default
        ``terminal_log_snr``.

    Example:
      >>> from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"})   # == cosine(1000, s=0.008)
    """
    cfg = _parse(config, ignore, SCHEDULE_KEYS)
    T = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        sched = _schedules.from_betas(cfg.trained_betas, dtype=dtype)
    elif cfg.beta_schedule == "linear":
        sched = _schedules.linear(T, beta_start=cfg.beta_start, beta_end=cfg.beta_end, dtype=dtype)
    elif cfg.beta_schedule == "scaled_linear":
        sched = _schedules.scaled_linear(T, beta_start=cfg.beta_start, beta_end=cfg.beta_end, dtype=dtype)
    elif cfg.beta_schedule == "squaredcos_cap_v2":
        sched = _schedules.cosine(T, s=0.008, max_beta=0.999, dtype=dtype)
    else:  # "sigmoid", the only other value _parse lets through
        try:
            sched = _schedules.from_betas(_sigmoid_betas(T, cfg.beta_start, cfg.beta_end), dtype=dtype)
        except ValueError as err:
            raise ArgumentError(
                "beta_start, beta_end",
                f"the sigmoid schedule needs betas in (0, 1), got "
                f"beta_start = {cfg.beta_start!r}, beta_end = {cfg.beta_end!r}{cfg.where} ({err})",
            ) from None
    if cfg.rescale_betas_zero_snr:
        if T < 2:
            raise ArgumentError("rescale_betas_zero_snr", f"needs num_train_timesteps >= 2, got {T}{cfg.where}")
        if terminal_log_snr is None:
            terminal_log_snr = _DEFAULT_TERMINAL_LOG_SNR
            warnings.warn(
                f"rescale_betas_zero_snr: true{cfg.where}: diffusers sets alpha_bar_T = 0 (logSNR_T = "
                f"-inf); pifs_jax keeps the terminal logSNR finite at {terminal_log_snr:g} "
                f"(alpha_bar_T = {1.0 / (1.0 + math.exp(-terminal_log_snr)):.3g}), because the "
                "eps-parameterised DDIM step cannot start from alpha_bar_T = 0; every other "
                "alpha_bar_t is Lin et al.'s. Pass terminal_log_snr= to choose the value and "
                "silence this note",
                DiffusersConversionWarning,
                stacklevel=2,
            )
        sched = _schedules.zero_terminal_snr(sched, terminal_log_snr=terminal_log_snr)
    return sched


def diffusers_config_grid(
    config: Mapping[str, Any] | str | os.PathLike,
    num_inference_steps: int,
    *,
    ignore: Iterable[str] = (),
) -> np.ndarray:
    """The DDIM sampling grid of a diffusers config, in this package's indexing.

    The descending diffusers timesteps ``k`` of ``DDIMScheduler.set_timesteps(N)`` for the config's
    ``timestep_spacing`` (default ``leading``):

    - ``linspace``: ``round(linspace(0, T-1, N))``
    - ``leading``: ``arange(N) (T // N) + steps_offset``
    - ``trailing``: ``round(arange(T, 0, -T/N)) - 1``

    become the grid ``[0] + sorted(k + 1)`` (:func:`~pifs_jax.grids.diffusers_grid`): diffusers'
    timestep ``k`` is our ``t = k + 1`` and the chain ends on ``alpha_bar = 1`` (``tau_0 = 0``).
    Example: ``T = 1000``, ``N = 10``, ``leading``, ``steps_offset = 1`` gives diffusers
    ``[901, 801, ..., 1]`` and the grid ``[0, 2, 102, ..., 902]``.

    Args:
      config: a dict, a path to ``scheduler_config.json`` or a folder holding one.
      num_inference_steps: ``N``, an integer in ``1..num_train_timesteps``.
      ignore: further key names to accept and ignore.

    Returns:
      Integer array ``(N+1,)``, ``0 = tau_0 < ... < tau_N <= T``.

    Raises:
      ValueError: for ``set_alpha_to_one: false`` (diffusers' last step would land on ``t = 1``,
        not on clean data; override it with ``{**config, "set_alpha_to_one": True}``), for an
        unknown ``timestep_spacing``, for a ``steps_offset`` that pushes the ``leading`` grid past
        ``T``, and for everything :func:`from_diffusers_config` rejects, except that a config
        without ``_class_name`` needs only one of :data:`SCHEDULE_KEYS` or :data:`GRID_KEYS`
        (the keys the grid depends on), e.g. ``{"timestep_spacing": "trailing"}``.
    """
    cfg = _parse(config, ignore, SCHEDULE_KEYS + GRID_KEYS)
    T = cfg.num_train_timesteps
    if not cfg.set_alpha_to_one:
        raise ArgumentError(
            "set_alpha_to_one",
            f"false makes diffusers' last DDIM step land on alphas_cumprod[0] "
            f"(t = 1) instead of alpha_bar = 1, and this package's grids end on tau_0 = 0; got "
            f"set_alpha_to_one = False{cfg.where}. Pass {{**config, 'set_alpha_to_one': True}} for "
            "the grid that ends on clean data",
        )
    if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= T:
        raise ArgumentError(
            "num_inference_steps", f"expected an integer in 1..num_train_timesteps = {T}, got {num_inference_steps!r}"
        )
    N = int(num_inference_steps)
    if cfg.timestep_spacing == "leading":
        largest = (N - 1) * (T // N) + cfg.steps_offset
        if largest > T - 1:
            raise ArgumentError(
                "steps_offset",
                f"{cfg.steps_offset} with num_inference_steps = {N} gives diffusers "
                f"timestep {largest}, beyond num_train_timesteps - 1 = {T - 1}{cfg.where}",
            )
    return diffusers_grid(T, N, spacing=cfg.timestep_spacing, steps_offset=cfg.steps_offset)


# ----------------------------------------------------------------------------- writing


def to_diffusers_config(sched: _schedules.Schedule, **overrides: Any) -> dict[str, Any]:
    """A ``DDIMScheduler`` config that reproduces ``sched`` in diffusers.

    The betas are computed in float64 from the stored ``log alpha_bar``,
    ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = -expm1(log alpha_bar_t - log alpha_bar_{t-1})``,
    and written as Python floats (JSON keeps every bit), so
    ``from_diffusers_config(to_diffusers_config(sched))`` returns ``sched`` to float64 round-off
    (the tests check 1e-12 relative on ``alpha_bar`` and ``1 - alpha_bar``). diffusers itself
    stores ``trained_betas`` in float32, so its ``alphas_cumprod`` matches to float32 round-off.
    A zero-terminal-SNR schedule is exported with its finite terminal beta and
    ``rescale_betas_zero_snr: false``.

    Args:
      sched: a concrete Schedule (not a tracer).
      **overrides: other config entries, e.g. ``steps_offset=1``, ``timestep_spacing="trailing"``,
        ``_class_name="DDPMScheduler"``. Keys that define the schedule (``trained_betas``,
        ``num_train_timesteps``, ``beta_*``, ``rescale_betas_zero_snr``) cannot be overridden, and
        every key must be one :func:`from_diffusers_config` reads back.

    Returns:
      A JSON-serialisable dict: ``_class_name: "DDIMScheduler"``, ``num_train_timesteps: T``,
      ``beta_schedule: "linear"`` (unused, as ``trained_betas`` takes precedence),
      ``trained_betas`` (``T`` floats), ``set_alpha_to_one: true``, ``steps_offset: 0``,
      ``timestep_spacing: "leading"``, ``prediction_type: "epsilon"``, ``clip_sample: false``,
      ``rescale_betas_zero_snr: false``, then the overrides.
    """
    if not isinstance(sched, _schedules.Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    if not is_concrete(sched):
        raise ArgumentError("sched", "must be concrete to export (got a traced Schedule inside a JAX transform)")
    fixed = set(SCHEDULE_KEYS)
    clash = sorted(fixed & set(overrides))
    if clash:
        raise ArgumentError(
            clash[0],
            f"defines the schedule and is set from sched; cannot be overridden "
            f"(got {clash[0]} = {overrides[clash[0]]!r:.200})",
        )
    log_ab = np.asarray(sched.log_alpha_bar, dtype=np.float64)
    betas = -np.expm1(np.diff(log_ab))
    if not np.all((betas > 0) & (betas < 1)):
        raise ArgumentError("sched", f"every beta must lie in (0, 1), got betas {describe(betas)}")
    config: dict[str, Any] = {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": int(sched.T),
        "beta_schedule": "linear",
        "trained_betas": [float(b) for b in betas],
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "leading",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "rescale_betas_zero_snr": False,
    }
    config.update(overrides)
    _parse(config, ())  # everything written must read back
    return config


def save_diffusers_config(sched: _schedules.Schedule, path: str | os.PathLike, **overrides: Any) -> Path:
    """Write :func:`to_diffusers_config` as JSON to ``path``, atomically.

    Args:
      sched: the schedule to export.
      path: the file to write (``scheduler_config.json`` for a diffusers ``scheduler/`` folder);
        a path to an existing folder writes ``scheduler_config.json`` inside it.
      **overrides: passed to :func:`to_diffusers_config`.

    Returns:
      The path written.
    """
    config = to_diffusers_config(sched, **overrides)
    path = Path(path)
    if path.is_dir():
        path = path / _CONFIG_FILE_NAME
    return atomic_write_text(path, json.dumps(config, indent=2, allow_nan=False) + "\n")
