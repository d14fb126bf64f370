"""The PIFS regulariser with seeds: coupling, (PC), in-domain quality and cost against ``mu``.

The paper proposes the cross-block regulariser ``L + mu sum_k sum_{j != k} ||[J_x epshat]_kj||_F^2``
(docs/theory.md section 7) and never trains with it. This study trains the shipped DiT recipe
(``dit-photos16``: 16x16 photograph crops, 4x4 patches, ``M = 16``) with each ``mu`` of
:data:`MUS` and each training seed of :data:`SEEDS` (the seed draws the initial weights, the
batches and the noise; the data are the same), **shortened** to :data:`STEPS` steps (the recipe's
16000 take about 47 min per run at ``mu = 0`` on a 2-core CPU, and the regulariser costs about
2.5x that; the learning-rate schedule, warm-up then cosine decay, is that of the shorter run). For
every run it measures, on the EMA weights:

- **coupling**: ``delta_cross_mean`` (the mean over patches of the summed spectral norms of a
  patch's off-diagonal step-Jacobian blocks, docs/theory.md section 11) averaged over the steps of
  :data:`TRAJECTORIES` deterministic DDIM chains of :data:`CHAIN_STEPS` steps (exact blocks,
  ``x_T`` from ``PRNGKey(0)``: the same trajectories' noise for every run), with ``kappa_diag_mean``;
- **(PC)** under the readings (A), (D) and (I) of docs/theory.md section 11: violating patches
  averaged over the steps, and each reading's crossover window;
- **in-domain quality** (the metric the regulariser is not optimised on): FD and KID in the
  photos16 encoder's features of :data:`NUM_SAMPLES` 50-step DDIM samples from the held-out noise
  against the test crops (:func:`pifs_jax.models.training.curve.score_model`), with the patch FD;
- **training MSE**: the denoising loss ``mean w_t ||epshat - eps||^2 / n`` (no regulariser) of the
  EMA weights on :data:`MSE_IMAGES` training crops and, beside it, on as many test crops, each
  with the same fixed ``t`` and noise for every run;
- **cost per step**, measured side by side in one process: the compiled training step of every
  ``mu`` timed in interleaved rounds (median seconds per step; ratio to ``mu = 0``).

**Verdict rule** (fixed before any run, docs/guides/trained-models.md). For each ``mu > 0`` the
paired differences over seeds ``d_s = value(mu, s) - value(0, s)`` of the coupling and of the
in-domain FD, with the mean's 95 % ``t`` interval (``len(SEEDS) - 1`` degrees of freedom):
*lowers* when the interval lies below 0, *lowers in the mean* when only the mean is below 0, *does
not lower* otherwise. The training MSE is *equal* when the mean relative difference is within
:data:`EQUAL_MSE` (5 %). The regulariser **works** at ``mu`` when it lowers the coupling and the
FD with equal training MSE; **partly** when both are lowered at least in the mean; otherwise it
**does not**.

Runs are kept in ``<out>/runs/mu{mu}_seed{seed}``: an interrupted study resumes (training from its
checkpoint, a finished run's measurements from its ``study.json``). Writes
``<out>/regulariser_study.json`` (config, seed, package versions) and
``<out>/regulariser_study.md``. Run with ``python scripts/regulariser_study.py --out
results/regulariser`` (about 90 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.analysis.report import analyze_model
from pifs_jax.analysis.statistics import student_t_quantile
from pifs_jax.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from pifs_jax.models.training import TrainConfig, load_run, load_train_test, model_for_config, train
from pifs_jax.models.training.curve import score_model
from pifs_jax.models.training.losses import denoising_loss, loss_tables, module_apply_fn
from pifs_jax.models.training.recipes import recipe
from pifs_jax.models.training.trainer import initial_train_state, train_step_for
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import atomic_write_text, write_result_json
from pifs_jax.schedules import named_schedule

RECIPE = "dit-photos16"
MUS = (0.0, 0.01, 0.1, 1.0)
SEEDS = (0, 1, 2)
STEPS = 1000
NUM_SAMPLES = 512
TRAJECTORIES, CHAIN_STEPS = 4, 20
MSE_IMAGES = 1024
EQUAL_MSE = 0.05
TIMING_ROUNDS, TIMING_STEPS = 5, 10
READINGS = ("A", "D", "I")


def run_config(mu: float, seed: int) -> TrainConfig:
    """The recipe at ``mu`` and ``seed``, shortened to :data:`STEPS` steps (no end-of-run sampling: scored here)."""
    return dataclasses.replace(
        recipe(RECIPE), steps=STEPS, mu=mu, seed=seed, num_samples=0, checkpoint_every=250, log_every=50
    )


def run_name(mu: float, seed: int) -> str:
    return f"mu{mu:g}_seed{seed}"


def patch_size(config: TrainConfig) -> int:
    size = config.resolved().patch_size
    assert size is not None  # resolved() fills it in
    return size


def trained(config: TrainConfig, folder: Path) -> None:
    """Train ``config`` into ``folder``; resume a checkpoint of the same run; do nothing when it is finished."""
    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.is_file():
        if int(read_checkpoint_header(checkpoint)["step"]) >= config.steps:
            return
        train(config, folder, resume=True, progress=True, evaluate=False)
    else:
        train(config, folder, overwrite=True, progress=True, evaluate=False)


def denoising_mse(module: Any, params: Any, config: TrainConfig, images: np.ndarray) -> float:
    """The unregularised loss of ``params`` on ``images`` with the key ``PRNGKey(0)`` (the same ``t`` and noise for every run)."""
    sched = named_schedule(config.schedule, config.T)
    tables = loss_tables(sched, weighting=config.weighting, gamma=config.min_snr_gamma)
    _, metrics = denoising_loss(params, module_apply_fn(module), jnp.asarray(images), jax.random.PRNGKey(0), tables)
    return float(metrics["mse"])


def measure_run(config: TrainConfig, folder: Path, train_images: np.ndarray, test_images: np.ndarray) -> dict:
    """The measurements of one finished run (module notes)."""
    run = load_run(folder)
    params = run.state.ema_params
    quality = score_model(
        run.module, params, config, train_images=train_images, test_images=test_images, num_samples=NUM_SAMPLES
    )
    sched = named_schedule(config.schedule, config.T)
    start = time.perf_counter()
    analysis = analyze_model(
        run.eps_fn, sched, train_images, patch_size=patch_size(config), steps=CHAIN_STEPS,
        samples=TRAJECTORIES, seed=0, method="exact",
    )  # fmt: skip
    summary = analysis.summary
    readings = {}
    for name in READINGS:
        reading = (summary.get("pc_readings") or {}).get(name)
        if reading:
            readings[name] = {
                "violations_mean": float(np.mean(reading["violations_mean"])),
                "crossover_window": reading["crossover_window"],
            }
    return {
        "coupling": float(np.mean(summary["steps"]["delta_cross_mean"]["mean"])),
        "kappa_diag": float(np.mean(summary["steps"]["kappa_diag_mean"]["mean"])),
        "readings": readings,
        "analysis_seconds": time.perf_counter() - start,
        "quality": {k: quality[k] for k in ("fd_in_domain", "kid_in_domain", "fd_patches", "fraction_outside")},
        "mse_train": denoising_mse(run.module, params, config, train_images[:MSE_IMAGES]),
        "mse_test": denoising_mse(run.module, params, config, test_images[:MSE_IMAGES]),
        "verdicts": {c.name: c.verdict for c in analysis.claims},
    }


def step_costs(train_images: np.ndarray) -> dict[str, Any]:
    """Seconds per training step of every ``mu``, timed in :data:`TIMING_ROUNDS` interleaved rounds in this process."""
    data = jnp.asarray(train_images)
    steps, states = {}, {}
    for mu in MUS:
        config = run_config(mu, 0).resolved()
        module, init_fn = model_for_config(config, train_images.shape[1:])
        steps[mu] = train_step_for(module, config, patch_size=patch_size(config))
        states[mu] = initial_train_state(config, init_fn)[1]
        states[mu], metrics = steps[mu](states[mu], data)  # compile
        jax.block_until_ready(metrics)
    times: dict[float, list[float]] = {mu: [] for mu in MUS}
    for _ in range(TIMING_ROUNDS):
        for mu in MUS:
            start = time.perf_counter()
            for _ in range(TIMING_STEPS):
                states[mu], metrics = steps[mu](states[mu], data)
            jax.block_until_ready(metrics)
            times[mu].append((time.perf_counter() - start) / TIMING_STEPS)
    medians = {mu: float(np.median(t)) for mu, t in times.items()}
    return {
        f"{mu:g}": {"seconds_per_step": medians[mu], "ratio_to_mu0": medians[mu] / medians[0.0], "rounds": times[mu]}
        for mu in MUS
    }


def paired(values: dict[float, list[float]], mu: float) -> dict[str, Any]:
    """Mean paired difference ``value(mu, s) - value(0, s)`` over seeds with its 95 % ``t`` interval."""
    d = np.asarray(values[mu]) - np.asarray(values[0.0])
    return {"differences": d.tolist(), **spread(d.tolist())}


def lowered(difference: dict[str, Any]) -> str:
    if difference["hi"] < 0:
        return "lowers"
    return "lowers in the mean" if difference["mean"] < 0 else "does not lower"


def spread(values: list[float]) -> dict[str, float]:
    """Mean over seeds with its 95 % ``t`` interval."""
    v = np.asarray(values, np.float64)
    half = (
        float(student_t_quantile(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    )
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half)}


def verdicts(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The verdict rule of the module notes, for every ``mu > 0``."""

    def by_mu(key) -> dict[float, list[float]]:
        return {mu: [key(runs[run_name(mu, s)]) for s in SEEDS] for mu in MUS}

    coupling = by_mu(lambda r: r["coupling"])
    fd = by_mu(lambda r: r["quality"]["fd_in_domain"])
    mse = by_mu(lambda r: r["mse_train"])
    out = {}
    for mu in MUS[1:]:
        c, f = paired(coupling, mu), paired(fd, mu)
        relative = float(np.mean(np.asarray(mse[mu]) / np.asarray(mse[0.0]) - 1.0))
        c_verdict, f_verdict = lowered(c), lowered(f)
        equal = abs(relative) <= EQUAL_MSE
        if c_verdict == f_verdict == "lowers" and equal:
            verdict = "works"
        elif c_verdict != "does not lower" and f_verdict != "does not lower":
            verdict = "partly"
        else:
            verdict = "does not"
        out[f"{mu:g}"] = {
            "coupling_difference": c, "coupling": c_verdict, "fd_difference": f, "fd": f_verdict,
            "mse_relative_difference": relative, "mse_equal": equal, "verdict": verdict,
        }  # fmt: skip
    return out


def table(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    def cell(values: list[float], digits: int = 4) -> str:
        s = spread(values)
        return f"{s['mean']:.{digits}g} [{s['lo']:.{digits}g}, {s['hi']:.{digits}g}]"

    rows = []
    for mu in MUS:
        entries = [runs[run_name(mu, s)] for s in SEEDS]
        rows.append([
            f"{mu:g}",
            cell([e["coupling"] for e in entries]),
            cell([e["kappa_diag"] for e in entries]),
            *(cell([e["readings"][r]["violations_mean"] for e in entries], 3) if all(r in e["readings"] for e in entries)
              else "n/a" for r in READINGS),
            cell([e["quality"]["fd_in_domain"] for e in entries]),
            cell([e["quality"]["kid_in_domain"] for e in entries], 3),
            cell([e["quality"]["fd_patches"] for e in entries], 3),
            cell([e["mse_train"] for e in entries]),
            cell([e["mse_test"] for e in entries]),
        ])  # fmt: skip
    return rows


HEADER = [
    "mu", "coupling delta_cross", "kappa_diag", "(A) violating", "(D) violating", "(I) violating",
    "in-domain FD", "in-domain KID", "patch FD", "train MSE", "test MSE",
]  # fmt: skip


def window_text(reading: dict[str, Any] | None) -> str:
    if reading is None:
        return "n/a"
    window = reading["crossover_window"]
    return "none" if window is None else f"[{window['t_lower']:g}, {window['t_upper']:g}]"


def render(results: dict[str, Any]) -> str:
    runs = results["runs"]
    verdict_rows = [
        [mu, f"{v['coupling_difference']['mean']:+.4f} [{v['coupling_difference']['lo']:+.4f}, "
         f"{v['coupling_difference']['hi']:+.4f}]: {v['coupling']}",
         f"{v['fd_difference']['mean']:+.3g} [{v['fd_difference']['lo']:+.3g}, {v['fd_difference']['hi']:+.3g}]: {v['fd']}",
         f"{100 * v['mse_relative_difference']:+.1f} %", v["verdict"]]
        for mu, v in results["verdicts"].items()
    ]  # fmt: skip
    cost_rows = [[mu, f"{c['seconds_per_step']:.3f}", f"{c['ratio_to_mu0']:.2f}x"] for mu, c in results["cost"].items()]
    window_rows = [
        [r, f"{mu:g}", "; ".join(window_text(runs[run_name(mu, s)]["readings"].get(r)) for s in SEEDS)]
        for r in READINGS
        for mu in MUS
    ]
    return (
        f"# The PIFS regulariser with {len(SEEDS)} seeds ({RECIPE} recipe, {STEPS} steps)\n\n"
        "Means over seeds with 95 % t intervals; coupling and (PC) over "
        f"{TRAJECTORIES} trajectories x {CHAIN_STEPS} DDIM steps; quality of {NUM_SAMPLES} samples.\n\n"
        + markdown_table(HEADER, table(runs))
        + "\n\n## Verdicts (paired by seed against mu = 0)\n\n"
        + markdown_table(["mu", "coupling difference", "in-domain FD difference", "train MSE", "verdict"], verdict_rows)
        + "\n\n## Cost per training step (side by side in one process)\n\n"
        + markdown_table(["mu", "seconds per step", "ratio to mu = 0"], cost_rows)
        + "\n\n## Crossover windows (per seed)\n\n"
        + markdown_table(["reading", "mu", "windows"], window_rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    train_images, test_images = load_train_test(run_config(0.0, 0).resolved())
    cost_path = out / "cost.json"
    if cost_path.is_file():
        cost = json.loads(cost_path.read_text())["results"]
    else:
        cost = step_costs(train_images)
        write_result_json(cost_path, cost, config={"mus": MUS, "recipe": RECIPE}, seed=0)
    print("cost per step:", {mu: round(c["seconds_per_step"], 3) for mu, c in cost.items()}, flush=True)
    runs: dict[str, dict[str, Any]] = {}
    for seed in SEEDS:
        for mu in MUS:
            config = run_config(mu, seed)
            folder = out / "runs" / run_name(mu, seed)
            measured = folder / "study.json"
            if measured.is_file():
                runs[run_name(mu, seed)] = json.loads(measured.read_text())["results"]
                continue
            start = time.perf_counter()
            trained(config, folder)
            entry = measure_run(config, folder, train_images, test_images)
            entry["measure_and_train_seconds"] = time.perf_counter() - start
            write_result_json(measured, entry, config=config.to_dict(), seed=seed)
            runs[run_name(mu, seed)] = entry
            print(
                run_name(mu, seed),
                json.dumps({k: entry[k] for k in ("coupling", "mse_train")}),
                entry["quality"],
                flush=True,
            )
    results = {"runs": runs, "verdicts": verdicts(runs), "cost": cost}
    config = {
        "recipe": RECIPE, "mus": MUS, "seeds": SEEDS, "steps": STEPS, "num_samples": NUM_SAMPLES,
        "trajectories": TRAJECTORIES, "chain_steps": CHAIN_STEPS, "mse_images": MSE_IMAGES, "equal_mse": EQUAL_MSE,
    }  # fmt: skip
    write_result_json(out / "regulariser_study.json", results, config=config, seed=0)
    atomic_write_text(out / "regulariser_study.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
