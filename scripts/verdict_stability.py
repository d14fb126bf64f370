"""How stable the trained-model verdicts are: each claim judged on resampled trajectories and on training seeds.

A verdict of docs/theory.md section 11 is read from trajectory means; a rerun with other
trajectories, or a model trained again from another seed, can move a value across a rule's
boundary. This script reports, for each claim, the verdict on each of several draws and the
fraction of draws on which it *holds*, beside the verdict of the first draw:

- **resampled trajectories**: every shipped model with ``n <= 1024`` (the exact blocks of a
  3072-dimensional step make ``dit-photos32`` too slow for this on a CPU) analysed as in
  docs/guides/trained-models.md (:func:`pifs_jax.analysis.report.analyze_model`, exact blocks,
  :data:`TRAJECTORIES` trajectories of :data:`STEPS` DDIM steps, the model's attention when it has
  any) with ``x_T`` from ``PRNGKey(s)`` for each ``s`` in :data:`TRAJECTORY_SEEDS`;
- **training seeds**: the ``mu = 0`` runs of ``scripts/regulariser_study.py`` (the ``dit-photos16``
  recipe shortened to 1000 steps, training seeds 0, 1, 2; their verdicts as that study recorded
  them: 4 trajectories of 20 steps, no attention entropy), when ``--regulariser-runs`` names its
  ``runs`` folder.

The settings were fixed before any draw was analysed. Each model's draws are kept in
``<out>/draws/<model>.json`` and reused by a rerun. Writes ``<out>/verdict_stability.json``
(config, seed, package versions) and ``<out>/verdict_stability.md``. Run with ``python
scripts/verdict_stability.py --out results/stability [--regulariser-runs
results/regulariser/runs]`` (about 15 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pifs_jax.analysis.claims import CLAIM_NAMES
from pifs_jax.analysis.report import analyze_model, attention_fn_if_any
from pifs_jax.models.pretrained import list_pretrained, pretrained
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import atomic_write_text, write_result_json

TRAJECTORY_SEEDS = (0, 1, 2)
TRAJECTORIES, STEPS = 16, 50
MAX_N = 1024
TRAINING_SEED_RUNS = ("mu0_seed0", "mu0_seed1", "mu0_seed2")


def trajectory_draws(name: str, model: Any) -> list[dict[str, str]]:
    """``[{claim: verdict}]``, one per trajectory seed, for the shipped model ``model`` named ``name``."""
    train, _ = model.load_data()
    attention = attention_fn_if_any(model.module, model.params, tuple(model.image_shape))
    patch_size = model.config.patch_size
    assert patch_size is not None  # a shipped model's configuration is resolved
    draws = []
    for seed in TRAJECTORY_SEEDS:
        start = time.perf_counter()
        result = analyze_model(
            model.eps_fn, model.schedule, train, patch_size=patch_size, steps=STEPS,
            samples=TRAJECTORIES, seed=seed, attention_fn=attention, method="exact",
        )  # fmt: skip
        draws.append({c.name: c.verdict for c in result.claims})
        print(f"{name}, trajectory seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return draws


def stability(draws: list[dict[str, str]]) -> dict[str, Any]:
    """Per claim: the verdict of each draw, the first draw's, and the fraction of draws on which it holds."""
    out = {}
    for claim in CLAIM_NAMES:
        verdicts = [d.get(claim, "not tested") for d in draws]
        out[claim] = {
            "verdicts": verdicts,
            "first": verdicts[0],
            "holds_fraction": float(np.mean([v == "holds" for v in verdicts])),
            "same_as_first_fraction": float(np.mean([v == verdicts[0] for v in verdicts])),
        }
    return out


def render(results: dict[str, Any]) -> str:
    names = list(results)
    rows = []
    for claim in CLAIM_NAMES:
        row = [claim]
        for name in names:
            entry = results[name][claim]
            shown = ", ".join(entry["verdicts"])
            row.append(f"{shown} (holds {sum(v == 'holds' for v in entry['verdicts'])}/{len(entry['verdicts'])})")
        rows.append(row)
    return (
        "# Verdict stability\n\n"
        + markdown_table(["claim", *names], rows)
        + f"\n\nTrajectory seeds {TRAJECTORY_SEEDS} ({TRAJECTORIES} trajectories x {STEPS} DDIM steps each).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--regulariser-runs", type=Path, default=None, help="scripts/regulariser_study.py's runs folder"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in list_pretrained():
        model = pretrained(name)
        if int(np.prod(model.image_shape)) > MAX_N:
            continue
        cached = args.out / "draws" / f"{name}.json"  # a rerun (e.g. with --regulariser-runs) reuses them
        if cached.is_file():
            draws = json.loads(cached.read_text())["results"]
        else:
            draws = trajectory_draws(name, model)
            write_result_json(cached, draws, config={"model": name, "trajectory_seeds": TRAJECTORY_SEEDS}, seed=0)
        results[f"{name} (trajectory seeds)"] = stability(draws)
    if args.regulariser_runs is not None:
        draws = [
            json.loads((args.regulariser_runs / run / "study.json").read_text())["results"]["verdicts"]
            for run in TRAINING_SEED_RUNS
        ]
        results["dit-photos16 recipe, 1000 steps (training seeds)"] = stability(draws)
    config = {"trajectory_seeds": TRAJECTORY_SEEDS, "trajectories": TRAJECTORIES, "steps": STEPS, "max_n": MAX_N}
    write_result_json(args.out / "verdict_stability.json", results, config=config, seed=0)
    atomic_write_text(args.out / "verdict_stability.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
