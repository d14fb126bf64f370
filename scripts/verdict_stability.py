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
  ``runs`` folder;
- **full-length training seeds**: each recipe of ``--recipes`` (default ``dit-digits``, the fastest
  shipped recipe: 11-26 minutes a seed on a 2-core CPU, by machine; ``dit-photos16`` took 43-47)
  trained exactly as recipe (all its steps) with each training seed of
  :data:`EXTRA_TRAINING_SEEDS`, beside the shipped model (training seed 0), each judged as the
  trajectory draws with ``x_T`` from ``PRNGKey(0)`` and scored by its in-domain FD and KID
  (:data:`NUM_SAMPLES` samples), when ``--training-seeds`` names a folder for those runs
  (resumable across sessions: ``train(..., resume=True)`` picks a killed run up at its last
  checkpoint, and each finished seed's draw is kept as ``<folder>/<recipe>/seed<s>.json``).

The settings were fixed before any draw was analysed. Each model's draws are kept in
``<out>/draws/<model>.json`` and reused by a rerun. Writes ``<out>/verdict_stability.json``
(config, seed, package versions) and ``<out>/verdict_stability.md``. Run with ``python
scripts/verdict_stability.py --out results/stability [--regulariser-runs
results/regulariser/runs] [--training-seeds results/training_seeds]`` (about 15 minutes on a 2-core
CPU, and about 50 more with ``--training-seeds`` for ``dit-digits``, 90 more for ``dit-photos16``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pifs_jax.analysis.claims import CLAIM_NAMES
from pifs_jax.analysis.report import analyze_model, attention_fn_if_any
from pifs_jax.checkpoint import CHECKPOINT_NAME
from pifs_jax.models.pretrained import list_pretrained, pretrained
from pifs_jax.models.training import load_run, load_train_test, train
from pifs_jax.models.training.curve import score_model
from pifs_jax.models.training.recipes import recipe
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import atomic_write_text, write_result_json
from pifs_jax.schedules import named_schedule

TRAJECTORY_SEEDS = (0, 1, 2)
TRAJECTORIES, STEPS = 16, 50
MAX_N = 1024
TRAINING_SEED_RUNS = ("mu0_seed0", "mu0_seed1", "mu0_seed2")
#: Training seeds trained here; seed 0 is the shipped model of the recipe.
EXTRA_TRAINING_SEEDS = (1, 2)
NUM_SAMPLES = 512


def judge(
    name: str, eps_fn: Any, schedule: Any, attention: Any, patch_size: int, images: Any, seed: int
) -> dict[str, str]:
    """``{claim: verdict}`` of one model with ``x_T`` from ``PRNGKey(seed)``, as docs/guides/trained-models.md."""
    start = time.perf_counter()
    result = analyze_model(
        eps_fn, schedule, images, patch_size=patch_size, steps=STEPS,
        samples=TRAJECTORIES, seed=seed, attention_fn=attention, method="exact",
    )  # fmt: skip
    print(f"{name}, trajectory seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return {c.name: c.verdict for c in result.claims}


def trajectory_draws(name: str, model: Any) -> list[dict[str, str]]:
    """``[{claim: verdict}]``, one per trajectory seed, for the shipped model ``model`` named ``name``."""
    train_images, _ = model.load_data()
    attention = attention_fn_if_any(model.module, model.params, tuple(model.image_shape))
    patch_size = model.config.patch_size
    assert patch_size is not None  # a shipped model's configuration is resolved
    return [judge(name, model.eps_fn, model.schedule, attention, patch_size, train_images, s) for s in TRAJECTORY_SEEDS]


def training_seed_draws(folder: Path, name: str) -> list[dict[str, Any]]:
    """``[{"seed", "verdicts", "fd_in_domain", "kid_in_domain"}]`` of recipe ``name``: the shipped model, then each seed trained here."""
    folder = folder / name
    shipped = pretrained(name)
    train_images, test_images = load_train_test(shipped.config)
    draws = []
    for seed in (0, *EXTRA_TRAINING_SEEDS):
        cached = folder / f"seed{seed}.json"
        if cached.is_file():
            draws.append(json.loads(cached.read_text())["results"])
            continue
        config = dataclasses.replace(recipe(name), seed=seed)
        if seed == 0:
            model, params, schedule = shipped, shipped.params, shipped.schedule
        else:
            run_dir = folder / f"seed{seed}"
            started = (run_dir / CHECKPOINT_NAME).is_file()
            model = load_run(run_dir) if started else None
            if model is None or int(model.state.step) < config.steps:
                start = time.perf_counter()
                train(config, run_dir, resume=started, progress=True, evaluate=False)
                print(f"trained seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
                model = load_run(run_dir)
            params, schedule = model.state.ema_params, named_schedule(config.schedule, config.T)
        attention = attention_fn_if_any(model.module, params, tuple(train_images.shape[1:]))
        assert config.patch_size is not None  # the recipe's configuration is resolved
        label = f"{name} training seed {seed}"
        verdicts = judge(label, model.eps_fn, schedule, attention, config.patch_size, train_images, 0)
        quality = score_model(
            model.module, params, config, train_images=train_images, test_images=test_images, num_samples=NUM_SAMPLES
        )
        draw = {"seed": seed, "verdicts": verdicts, **{k: quality[k] for k in ("fd_in_domain", "kid_in_domain")}}
        write_result_json(cached, draw, config={"recipe": name, "training_seed": seed}, seed=seed)
        draws.append(draw)
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
    scores = [results[name].get("scores") for name in names]
    if any(scores):
        rows.append([
            "in-domain FD / KID of each training seed",
            *("" if s is None else ", ".join(f"{d['fd_in_domain']:.2f} / {d['kid_in_domain']:.3f}" for d in s)
              for s in scores),
        ])  # fmt: skip
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
    parser.add_argument(
        "--training-seeds", type=Path, default=None,
        help=f"folder for the full-length runs of training seeds {EXTRA_TRAINING_SEEDS} (one subfolder per recipe)",
    )  # fmt: skip
    parser.add_argument(
        "--recipes", nargs="+", choices=list_pretrained(), default=["dit-digits"],
        help="shipped recipes trained again for --training-seeds (default: dit-digits)",
    )  # fmt: skip
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
    if args.training_seeds is not None:
        for name in args.recipes:
            seeds = training_seed_draws(args.training_seeds, name)
            column = stability([d["verdicts"] for d in seeds])
            column["scores"] = [{k: d[k] for k in ("seed", "fd_in_domain", "kid_in_domain")} for d in seeds]
            results[f"{name} recipe, full length (training seeds)"] = column
    config = {
        "trajectory_seeds": TRAJECTORY_SEEDS, "trajectories": TRAJECTORIES, "steps": STEPS, "max_n": MAX_N,
        "training_seed_recipes": args.recipes if args.training_seeds is not None else [],
        "extra_training_seeds": EXTRA_TRAINING_SEEDS, "num_samples": NUM_SAMPLES,
    }  # fmt: skip
    write_result_json(args.out / "verdict_stability.json", results, config=config, seed=0)
    atomic_write_text(args.out / "verdict_stability.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
