"""Claims against training length: one recipe's checkpoints at 5, 10, 25, 50 and 100 % of its training.

Whether a claim of docs/theory.md section 11 that does not hold on a shipped model is a property
of the architecture or of an unconverged network can be read from how its verdict and value move
while the same run trains. This script trains the shipped recipe :data:`RECIPE` (``dit-digits``:
the one recipe whose full 20,000 steps fit a session on a 2-core CPU, about 11 minutes alone)
exactly as recipe, in pieces (``train(..., stop_at=S)``, each piece continuing the run bit-exactly
with the learning-rate schedule planned for the full run), keeps the checkpoint at each fraction
of :data:`FRACTIONS`, and analyses each checkpoint's EMA weights with the same trajectories and
settings as docs/guides/trained-models.md (:func:`pifs_jax.analysis.report.analyze_model`:
``x_T`` from ``PRNGKey(0)``, :data:`TRAJECTORIES` trajectories of :data:`STEPS` DDIM steps, exact
blocks, the model's attention), beside its in-domain FD and KID (:data:`NUM_SAMPLES` samples) and
the logged training eps-MSE. The definitions and rules are the package's, unchanged; nothing here
is chosen after seeing a result.

Resumable: each kept checkpoint (``<out>/checkpoints/step-<S>.msgpack``) and each point's
measurements (``<out>/points/step-<S>.json``, with config, seed and package versions) are written
atomically and reused by a rerun.
Writes ``<out>/training_length.json`` (config, seed, package versions), ``training_length.md``
and ``training_length.png``. Run with ``python scripts/training_length.py --out
results/training_length`` (about 15 minutes alone on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pifs_jax.analysis.claims import CLAIM_NAMES, VERDICTS
from pifs_jax.analysis.report import analyze_model, attention_fn_if_any
from pifs_jax.checkpoint import CHECKPOINT_NAME
from pifs_jax.models.training import load_run, load_train_test, read_metrics_log, train
from pifs_jax.models.training.curve import score_model
from pifs_jax.models.training.recipes import recipe
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import atomic_write_bytes, atomic_write_text, to_jsonable, write_result_json
from pifs_jax.schedules import named_schedule

RECIPE = "dit-digits"
FRACTIONS = (0.05, 0.10, 0.25, 0.50, 1.0)
TRAJECTORIES, STEPS = 16, 50
NUM_SAMPLES = 512
#: Logged eps-MSE values averaged for each point (the last ones up to its step).
MSE_WINDOW = 10


def measure(run_dir: Path, step: int, train_images: np.ndarray, test_images: np.ndarray) -> dict[str, Any]:
    """The claims, the in-domain scores and the logged eps-MSE of the run's EMA weights at ``step``."""
    run = load_run(run_dir)
    assert int(run.state.step) == step, (int(run.state.step), step)
    config = run.config
    patch_size = config.patch_size
    assert patch_size is not None  # a loaded run's configuration is resolved
    params = run.state.ema_params
    attention = attention_fn_if_any(run.module, params, tuple(train_images.shape[1:]))
    start = time.perf_counter()
    analysis = analyze_model(
        run.eps_fn, named_schedule(config.schedule, config.T), train_images, patch_size=patch_size, steps=STEPS,
        samples=TRAJECTORIES, seed=0, attention_fn=attention, method="exact",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    quality = score_model(
        run.module, params, config, train_images=train_images, test_images=test_images, num_samples=NUM_SAMPLES
    )
    logged = [r["mse"] for r in read_metrics_log(run_dir / "metrics.jsonl") if r["step"] <= step][-MSE_WINDOW:]
    return {
        "step": step,
        "claims": {
            c.name: {"verdict": c.verdict, "value": c.value, "interval": c.interval, "ours": c.ours}
            for c in analysis.claims
        },
        "quality": {k: quality[k] for k in ("fd_in_domain", "kid_in_domain", "fd_patches", "fraction_outside")},
        "train_mse": float(np.mean(logged)),
        "analysis_seconds": seconds,
    }


def compute(out: Path) -> dict[str, Any]:
    config = recipe(RECIPE)
    train_images, test_images = load_train_test(config)
    run_dir = out / "run"
    points = []
    for fraction in FRACTIONS:
        step = round(fraction * config.steps)
        kept = out / "checkpoints" / f"step-{step}.msgpack"
        point_file = out / "points" / f"step-{step}.json"
        if point_file.is_file():
            points.append(json.loads(point_file.read_text())["results"])
            continue
        if not kept.is_file():
            resume = (run_dir / CHECKPOINT_NAME).is_file()
            start = time.perf_counter()
            train(config, run_dir, resume=resume, stop_at=step, progress=True, evaluate=False)
            print(f"trained to step {step}: {time.perf_counter() - start:.0f} s", flush=True)
            atomic_write_bytes(kept, (run_dir / CHECKPOINT_NAME).read_bytes())
        point = {"fraction": fraction, **measure(run_dir, step, train_images, test_images)}
        write_result_json(point_file, point, config={"recipe": RECIPE, "step": step}, seed=0)
        point = to_jsonable(point)  # as a rerun reads it back (non-finite values as strings)
        print(f"step {step}: " + ", ".join(f"{k} {v['verdict']}" for k, v in point["claims"].items()), flush=True)
        points.append(point)
    return {"recipe": RECIPE, "steps": config.steps, "points": points}


def claim_value(point: dict[str, Any], claim: str) -> float:
    """The claim's value at ``point`` (``nan`` when not tested; written as the string ``"nan"``)."""
    value = point["claims"].get(claim, {}).get("value")
    return math.nan if value is None else float(value)


def render(results: dict[str, Any]) -> str:
    points = results["points"]
    head = ["claim", *(f"{100 * p['fraction']:g} % ({p['step']})" for p in points)]
    rows = []
    for claim in CLAIM_NAMES:
        cells = []
        for p in points:
            verdict, value = p["claims"].get(claim, {}).get("verdict", "not tested"), claim_value(p, claim)
            cells.append(verdict if math.isnan(value) else f"{verdict} ({value:.3g})")
        rows.append([claim, *cells])
    rows.append(["in-domain FD", *(f"{p['quality']['fd_in_domain']:.2f}" for p in points)])
    rows.append(["in-domain KID", *(f"{p['quality']['kid_in_domain']:.3f}" for p in points)])
    rows.append(["training eps-MSE (logged)", *(f"{p['train_mse']:.4f}" for p in points)])
    return (
        f"# Claims against training length ({results['recipe']}, {results['steps']} steps)\n\n"
        + markdown_table(head, rows)
        + f"\n\nEach checkpoint's EMA weights; {TRAJECTORIES} trajectories x {STEPS} DDIM steps, x_T from PRNGKey(0),"
        " exact blocks; in-domain scores of "
        f"{NUM_SAMPLES} samples.\n"
    )


def draw(results: dict[str, Any], path: Path) -> None:
    points = results["points"]
    fractions = [100 * p["fraction"] for p in points]
    colours = dict(zip(VERDICTS, ("C2", "C1", "C3", "C7"), strict=True))
    fig, axes = plt.subplots(2, 6, figsize=(18, 6), layout="constrained")
    panels = [*CLAIM_NAMES, "fd_in_domain", "train_mse"]
    for ax, name in zip(axes.ravel(), panels, strict=True):
        if name in CLAIM_NAMES:
            values = [claim_value(p, name) for p in points]
            ax.plot(fractions, values, color="0.6", linewidth=1)
            for x, p, v in zip(fractions, points, values, strict=True):
                verdict = p["claims"].get(name, {}).get("verdict", "not tested")
                ax.scatter([x], [v], color=colours.get(verdict, "k"), label=verdict, zorder=3)
            handles = {h.get_label(): h for h in ax.collections}
            ax.legend(handles.values(), handles.keys(), fontsize=6)
        else:
            values = [p["quality"]["fd_in_domain"] if name == "fd_in_domain" else p["train_mse"] for p in points]
            ax.plot(fractions, values, marker="o")
            ax.set_yscale("log")
        ax.set_xlim(0.8 * fractions[0], 1.25 * fractions[-1])  # explicit: a panel may hold no finite value
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_title(name.replace("_", " "), fontsize=8)
        ax.set_xlabel("training (% of steps)", fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (reused by a rerun)")
    args = parser.parse_args(argv)
    results = compute(args.out)
    config = {"recipe": RECIPE, "fractions": FRACTIONS, "trajectories": TRAJECTORIES, "steps": STEPS,
              "num_samples": NUM_SAMPLES, "mse_window": MSE_WINDOW}  # fmt: skip
    write_result_json(args.out / "training_length.json", results, config=config, seed=0)
    atomic_write_text(args.out / "training_length.md", render(results))
    draw(results, args.out / "training_length.png")
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
