"""The (PC) readings and the corrected attractor on every shipped model and the empirical-optimal denoiser.

For each shipped model (:func:`pifs_jax.models.pretrained.list_pretrained`) and for the
empirical-optimal denoiser of each model's training images (once per data set), the deterministic
DDIM chain is analysed by :func:`pifs_jax.analysis.report.analyze_model` (exact blocks, the
model's own patch size, the uniform grid, ``x_T`` from ``PRNGKey(SEED)``), and the three readings
it records are tabulated: (A) ``m_k = 1 - (kappa_k + delta_k)``, (D) ``m_k = 1 - (f_t(lambda_k) -
S_{k,t})`` and (I) ``m_k = 1 - sum_j |<v_k, [J]_kj v_j>|``, each with its crossover window and
its mean margin and violating patches at high noise (``logSNR < 0``) and at low noise; and the
suppression-corrected Kaplan-Yorke dimension ``d_KY^eff`` and Moran threshold ``lambda***`` of
docs/theory.md section 6 (:func:`pifs_jax.analysis.corrected_attractor`).

The settings below were fixed before any reading was computed on a model; the 32x32 model gets
fewer trajectories and steps (its exact step Jacobian is 3072 x 3072). Writes
``<out>/pc_readings.json`` (config, seed, package versions) and ``<out>/pc_readings.md``.

Run with ``python scripts/pc_readings.py --out results/pc_readings`` (about 25 minutes on a
2-core CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from pifs_jax.analysis.report import analyze_model, card_sample_quality, reference_sample_quality
from pifs_jax.denoisers import empirical_denoiser
from pifs_jax.models.pretrained import list_pretrained, pretrained
from pifs_jax.models.training import load_train_test
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import atomic_write_text, write_result_json

SEED = 0
#: ``(trajectories, DDIM steps)`` by image size ``n``, fixed before measuring.
SETTINGS = {"small": (8, 50), "large": (2, 20)}
LARGE_N = 1024  # n above which a model gets the "large" setting
READINGS = ("A", "D", "I")


def settings_for(image_shape: tuple[int, ...]) -> tuple[int, int]:
    return SETTINGS["large" if int(np.prod(image_shape)) > LARGE_N else "small"]


def reading_summary(summary: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Window, and mean margin / violating patches over the high- and low-noise steps, of one reading."""
    reading = summary["pc_readings"].get(name)
    if reading is None:
        return None
    high = np.asarray(summary["logsnr"]) < 0
    margin = np.asarray(reading["margin_mean"], np.float64)
    violations = np.asarray(reading["violations_mean"], np.float64)
    return {
        "crossover_window": reading["crossover_window"],
        "margin_high_noise": float(margin[high].mean()) if high.any() else None,
        "margin_low_noise": float(margin[~high].mean()) if (~high).any() else None,
        "violations_high_noise": float(violations[high].mean()) if high.any() else None,
        "violations_low_noise": float(violations[~high].mean()) if (~high).any() else None,
        "violations_last_step": float(violations[-1]),
    }


def measure(label: str, eps_fn, sched, images, patch_size: int, quality: dict[str, Any]) -> dict[str, Any]:
    samples, steps = settings_for(images.shape[1:])
    start = time.perf_counter()
    result = analyze_model(
        eps_fn, sched, images, patch_size=patch_size, steps=steps, samples=samples, seed=SEED,
        method="exact", sample_quality=quality,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{label}: {samples} trajectories x {steps} steps in {seconds:.0f} s", flush=True)
    return {
        "trajectories": samples,
        "steps": steps,
        "patch_size": patch_size,
        "num_patches": result.summary["num_patches"],
        "seconds": seconds,
        "readings": {name: reading_summary(result.summary, name) for name in READINGS},
        "corrected_attractor": result.summary["corrected_attractor"],
    }


def window_text(window: dict[str, float] | None) -> str:
    return "none" if window is None else f"[{window['t_lower']:g}, {window['t_upper']:g}]"


def render(results: dict[str, Any]) -> str:
    rows = []
    for label, entry in results.items():
        m = entry["num_patches"]
        for name in READINGS:
            r = entry["readings"][name]
            if r is None:
                continue
            rows.append([
                label, name, window_text(r["crossover_window"]),
                f"{r['margin_high_noise']:+.4f}", f"{r['violations_high_noise']:.1f} of {m}",
                f"{r['margin_low_noise']:+.4f}", f"{r['violations_low_noise']:.1f} of {m}",
                f"{r['violations_last_step']:.1f}",
            ])  # fmt: skip
    header = [
        "denoiser", "reading", "crossover window", "mean margin, logSNR < 0", "violating, logSNR < 0",
        "mean margin, logSNR >= 0", "violating, logSNR >= 0", "violating, last step",
    ]  # fmt: skip
    attractor_rows = []
    for label, entry in results.items():
        a = entry["corrected_attractor"]
        if a is None:
            continue
        threshold = a["moran_threshold"]
        attractor_rows.append([
            label,
            f"{a['dimension']['mean']:.1f} [{a['dimension']['lo']:.1f}, {a['dimension']['hi']:.1f}] of {a['n']}",
            "none" if threshold is None else f"{threshold['mean']:.4g} [{threshold['lo']:.4g}, {threshold['hi']:.4g}]",
            f"{a['trajectories_with_crossing']} of {entry['trajectories']}",
            f"{a['expanding_patches_mean']:.1f} of {entry['num_patches']}",
        ])  # fmt: skip
    attractor = markdown_table(
        ["denoiser", "d_KY^eff", "lambda***", "trajectories with a crossing", "expanding patches"], attractor_rows
    )
    settings = "; ".join(f"{k}: {v['trajectories']} x {v['steps']} steps" for k, v in results.items())
    return (
        "# (PC) readings\n\n" + markdown_table(header, rows) + "\n\n# Suppression-corrected attractor\n\n"
        + attractor + f"\n\nTrajectories x DDIM steps: {settings}.\n"
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--models", nargs="*", default=None, help="shipped models (default: all)")
    args = parser.parse_args(argv)
    names = args.models or list_pretrained()
    results: dict[str, Any] = {}
    empirical_done: set[str] = set()
    for name in names:
        model = pretrained(name)
        images, _ = load_train_test(model.config)
        patch = model.config.patch_size
        assert patch is not None  # a shipped model's configuration is resolved
        results[name] = measure(name, model.eps_fn, model.schedule, images, patch, card_sample_quality(model.card))
        if model.config.data not in empirical_done:
            empirical_done.add(model.config.data)
            eps_fn = empirical_denoiser(model.schedule, np.asarray(images, np.float32))
            quality = reference_sample_quality("the empirical-optimal denoiser of the training images (no weights)")
            results[f"empirical ({model.config.data})"] = measure(
                f"empirical ({model.config.data})", eps_fn, model.schedule, images, patch, quality
            )
    args.out.mkdir(parents=True, exist_ok=True)
    config = {"models": names, "settings": SETTINGS, "large_n": LARGE_N, "method": "exact", "sampler": "DDIM"}
    write_result_json(args.out / "pc_readings.json", results, config=config, seed=SEED)
    atomic_write_text(args.out / "pc_readings.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
