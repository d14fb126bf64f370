"""The package's samplers by name, for the command line and configuration files."""

from __future__ import annotations

from pifs_jax.errors import ArgumentError
from pifs_jax.samplers.base import Sampler
from pifs_jax.samplers.ddim import DDIM
from pifs_jax.samplers.dpm_solver import DPMSolverPP2M
from pifs_jax.samplers.heun import Heun

__all__ = ["SAMPLER_NAMES", "named_sampler", "sampler_label", "sampler_name"]

_SAMPLERS: dict[str, type[Sampler]] = {"ddim": DDIM, "dpmpp2m": DPMSolverPP2M, "heun": Heun}

#: Names accepted by :func:`named_sampler` (deterministic samplers with default hyperparameters).
SAMPLER_NAMES = tuple(_SAMPLERS)


def named_sampler(name: str) -> Sampler:
    """The sampler called ``name`` (``"ddim"``: ``DDIM(eta=0)``, ``"dpmpp2m"``, ``"heun"``).

    Args:
      name: one of :data:`SAMPLER_NAMES`.

    Returns:
      a new instance of the sampler with its default hyperparameters.

    Raises:
      ArgumentError: naming ``sampler`` for an unknown name, listing :data:`SAMPLER_NAMES`.
    """
    if name not in _SAMPLERS:
        raise ArgumentError("sampler", f"expected one of {SAMPLER_NAMES}, got {name!r}")
    return _SAMPLERS[name]()


def sampler_name(sampler: Sampler) -> str:
    """The registered name of ``sampler``'s class, or its class name for a user's sampler.

    Args:
      sampler: the sampler.

    Returns:
      one of :data:`SAMPLER_NAMES` when ``sampler``'s class is exactly a registered one (a subclass
      is not), else the class name.
    """
    for name, cls in _SAMPLERS.items():
        if type(sampler) is cls:
            return name
    return type(sampler).__name__


_LABELS = {"ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)", "heun": "Heun"}


def sampler_label(sampler: Sampler) -> str:
    """A reader's name for ``sampler`` in reports.

    Args:
      sampler: the sampler.

    Returns:
      ``"DDIM"`` (deterministic), ``"DDIM(eta=0.5)"`` (the ``repr`` of a stochastic DDIM),
      ``"DPM-Solver++(2M)"``, ``"Heun"``, or the ``repr`` of a user's sampler.
    """
    name = sampler_name(sampler)
    if name == "ddim" and getattr(sampler, "stochastic", False):
        return repr(sampler)
    return _LABELS.get(name, repr(sampler))
