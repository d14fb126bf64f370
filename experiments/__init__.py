"""The experiment scripts: one per claim of the paper, each runnable on its own.

This folder is installed as the package ``pifs_jax.experiments`` (``pyproject.toml`` maps the
package onto this folder), so ``pifs-jax reproduce`` finds the same scripts in a clone, an
editable install and an installed wheel. Run one script alone with
``python experiments/NAME.py --out results`` from a clone, or with
``python -m pifs_jax.experiments.NAME --out results`` from an installed copy.

The contract every script follows (``NAME``, ``TITLE``, ``run(out_dir, *, quick)``) is described
in :mod:`pifs_jax.reproduce`. Files whose name starts with ``_`` (this one included) are not
experiments.
"""
