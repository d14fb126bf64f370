"""The paper's trained-model claims, tested on the package's own models (docs/theory.md section 11).

The paper describes the DDIM chain of a trained CIFAR-10 UNet in two regimes: at high noise the
diagonal Jacobian blocks of the step stay pinned near 1 and the expansion is carried by
cross-patch coupling; a narrow crossover window follows in which the (PC) margin changes sign and
suppression is released patch by patch, low-variance patches first; at low noise the diagonal
blocks expand. This experiment measures every one of those claims with the definitions and
verdict rules fixed in docs/theory.md section 11 (before any model was analysed), on

- the package's **patch transformer** (DiT, tokens = the PIFS patches) and **UNet** trained on
  ``photos16`` (16x16x3 crops of real photographs, 4x4 patches: ``M = 16`` patches, like the
  paper's CIFAR setting, of ``n_k = 48`` coordinates);
- the **empirical-optimal denoiser** of the same training crops (exact softmax attention over
  them), a training-free reference whose attractor is the training set.

Beyond the paper (which proposes the PIFS regulariser but never trains with it, and validates
only UNets): (a) the DiT trained with the regulariser at two strengths ``mu`` (same seed, data and
steps as ``mu = 0``): coupling over ``t``, crossover window, (PC) violations, sample quality and
training cost; (b) DiT against UNet on the same data.

**Shipped models first**: when the package ships the mode's trained models
(:data:`SHIPPED`: ``dit-photos16`` and ``unet-photos16`` by default, ``dit-digits`` in the quick
mode; :mod:`pifs_jax.models.pretrained`), they are analysed and nothing is trained; the report
names the weights (name and sha256) and takes their training cost and quality from their cards.
No regularised model is shipped, so the regulariser comparison (a) then needs ``--retrain``.

Otherwise, and with ``retrain=True`` (``pifs-jax reproduce --retrain``) or ``--full``, the models
are trained. Training is short by default so that ``pifs-jax reproduce`` stays within minutes on a CPU: the
runs are cached in ``<out>/two_regimes/runs/`` (a finished run with the same configuration is
loaded, an interrupted one resumes), so a second reproduction trains nothing. ``--full`` trains
each model for the quick preset's 4000 steps and analyses 64 trajectories of 50 steps; on a GPU
it uses the ``photos32`` models with 8x8 patches (``M = 16``, ``n_k = 192``: the paper's block
geometry). Every claim's verdict is reported as measured; on short training the models are far
from converged, and the report says so: each model's verdicts (rows, counts, its ``analysis.md``)
carry its sample-quality caveat (:func:`pifs_jax.analysis.report.marked_verdict`; the recorded
quality of the run or the card, docs/theory.md section 11).

Writes ``<out>/two_regimes/two_regimes.json``, one folder per model with ``analysis.json``,
``analysis.md`` and five figures (:func:`pifs_jax.analysis.report.write_analysis`), and the
comparison figures ``models.png`` and ``regulariser.png``.
Run alone with ``python experiments/two_regimes.py --out results [--quick | --full] [--retrain]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pifs_jax import plotting
from pifs_jax.analysis.chain_analysis import default_chunk
from pifs_jax.analysis.report import (
    ModelAnalysis,
    analyze_model,
    attention_fn_if_any,
    card_sample_quality,
    marked_verdict,
    reference_sample_quality,
    run_sample_quality,
    verdict_caveat,
    write_analysis,
)
from pifs_jax.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from pifs_jax.denoisers import empirical_attention, empirical_denoiser
from pifs_jax.errors import ArgumentError
from pifs_jax.models.pretrained import PretrainedModel, list_pretrained, pretrained
from pifs_jax.models.training import (
    LoadedRun,
    TrainConfig,
    load_run,
    load_train_test,
    model_for_config,
    read_metrics_log,
    train,
    train_config,
)
from pifs_jax.reproduce import experiment_main, format_value, markdown_table
from pifs_jax.results import write_result_json
from pifs_jax.schedules import named_schedule
from pifs_jax.typing import EpsFn

NAME = "two_regimes"
TITLE = "Two regimes of a trained denoiser's chain: the paper's trained-model claims, tested"

SEED = 0
#: Regulariser strengths compared with mu = 0 (fixed before any run; one decade apart).
MU_VALUES = (0.01, 0.1)

#: Per mode: training steps per model, crops, samples scored, trajectories and DDIM steps analysed.
CONFIG: dict[str, dict[str, Any]] = {
    "quick": dict(
        preset="quick",
        data="digits",
        dit_steps=5,
        unet_steps=0,
        reg_steps=5,
        num_train=128,
        num_test=32,
        num_samples=8,
        trajectories=2,
        chain_steps=3,
        num_mu=1,
    ),
    "default": dict(
        preset="quick",
        data="photos16",
        dit_steps=500,
        unet_steps=300,
        reg_steps=500,
        num_train=4096,
        num_test=1024,
        num_samples=128,
        trajectories=4,
        chain_steps=20,
    ),
    "full": dict(
        preset="quick",
        data="photos16",
        dit_steps=4000,
        unet_steps=4000,
        reg_steps=4000,
        num_train=4096,
        num_test=1024,
        num_samples=256,
        trajectories=64,
        chain_steps=50,
    ),
    "full_gpu": dict(
        preset="full",
        data="photos32",
        dit_steps=20000,
        unet_steps=20000,
        reg_steps=20000,
        num_train=16384,
        num_test=2048,
        num_samples=512,
        trajectories=64,
        chain_steps=50,
    ),
}


#: Per mode: the shipped model analysed in place of each trained run, used when all of them are
#: shipped (and neither retrain nor full is asked for). The full modes always train.
SHIPPED: dict[str, dict[str, str]] = {
    "quick": {"dit": "dit-digits"},
    "default": {"dit": "dit-photos16", "unet": "unet-photos16"},
}


def shipped_models(mode: str, *, retrain: bool = False) -> dict[str, str] | None:
    """``{run name: shipped model}`` the mode analyses instead of training, or ``None`` (train).

    ``None`` when ``retrain`` is asked for, when the mode has no shipped models (the full modes),
    or when one of them is not shipped (:func:`pifs_jax.models.pretrained.list_pretrained`).
    """
    names = SHIPPED.get(mode)
    if retrain or not names:
        return None
    available = list_pretrained()
    return dict(names) if all(name in available for name in names.values()) else None


def shipped_run(loaded: PretrainedModel) -> dict[str, Any]:
    """A shipped model as :func:`trained_run` describes a run: the network, its cost and quality from its card."""
    training = loaded.card["training"]
    return {
        "module": loaded.module,
        "params": loaded.params,
        "eps_fn": loaded.eps_fn,
        "config": loaded.config,
        "cached": True,
        "train_seconds": float(training.get("wall_seconds") or float("nan")),
        "images_per_s": float(training.get("images_per_s_median") or float("nan")),
        "quality": card_quality(loaded.card.get("quality") or {}),
        "sample_quality": card_sample_quality(loaded.card),
        "weights": {"name": loaded.name, "sha256": loaded.sha256},
    }


def card_quality(quality: dict[str, Any]) -> dict[str, Any]:
    """A card's held-out scores in the layout of :func:`pifs_jax.models.quality.quality_report` that this report reads.

    Cards record the fraction of values outside ``[-1.05, 1.05]`` (the shipping target), not outside
    the data range: it is passed on under its own name, never relabelled.
    """
    held = quality.get("held_out") or {}
    return {
        "model": {"fd_patches": held.get("fd_patches")},
        "train_crops": {"fd_patches": held.get("fd_train_crops")},
        "memorisation_ratio": held.get("memorisation_ratio"),
        "fraction_outside_1.05": held.get("fraction_outside"),
    }


def mode_config(*, quick: bool, full: bool) -> tuple[str, dict[str, Any]]:
    """The mode's name and settings (``full`` on a GPU/TPU: the 32x32 models with 8x8 patches)."""
    if quick:
        return "quick", CONFIG["quick"]
    if full:
        mode = "full" if jax.default_backend() == "cpu" else "full_gpu"
        return mode, CONFIG[mode]
    return "default", CONFIG["default"]


def mu_values(cfg: dict[str, Any]) -> tuple[float, ...]:
    """The regulariser strengths of a mode (the quick mode trains one: the code path is the same for each)."""
    return MU_VALUES[: cfg.get("num_mu", len(MU_VALUES))]


def run_configs(cfg: dict[str, Any]) -> dict[str, TrainConfig]:
    """The training runs: DiT (mu = 0), UNet, and the DiT with each regulariser strength."""
    common = dict(
        seed=SEED,
        data=cfg["data"],
        num_train=cfg["num_train"],
        num_test=cfg["num_test"],
        num_samples=cfg["num_samples"],
    )
    runs = {"dit": train_config(cfg["preset"], model="dit", steps=cfg["dit_steps"], **common)}
    if cfg["unet_steps"]:  # the quick mode (tests) leaves the UNet out: its code path is the DiT's
        runs["unet"] = train_config(cfg["preset"], model="unet", steps=cfg["unet_steps"], **common)
    for mu in mu_values(cfg):
        runs[f"dit_mu{mu:g}"] = train_config(cfg["preset"], model="dit", steps=cfg["reg_steps"], mu=mu, **common)
    if cfg["reg_steps"] != cfg["dit_steps"]:  # the regulariser's mu = 0 reference: same steps
        runs["dit_mu0"] = train_config(cfg["preset"], model="dit", steps=cfg["reg_steps"], **common)
    return runs


def _same_run(folder: Path, config: TrainConfig) -> bool:
    if not (folder / "config.json").is_file():
        return False
    recorded = json.loads((folder / "config.json").read_text())
    try:
        return TrainConfig(**recorded).identity() == config.identity()
    except (TypeError, ArgumentError):
        return False


def trained_run(name: str, config: TrainConfig, runs_dir: Path) -> dict[str, Any]:
    """Train ``config`` into ``runs_dir / name`` unless a finished run of the same configuration is there.

    An interrupted run of the same configuration resumes; a run of another configuration is
    replaced. Returns the run (EMA parameters), its quality scores and its training cost, read from
    the run's own ``metrics.jsonl`` (so a cached run reports the cost it had when it was trained).
    """
    folder = runs_dir / name
    same = _same_run(folder, config)
    cached = False
    if same and (folder / "quality.json").is_file() and (folder / CHECKPOINT_NAME).is_file():
        try:
            cached = int(read_checkpoint_header(folder / CHECKPOINT_NAME)["step"]) == config.steps
        except ArgumentError:
            cached = False
    if cached:
        run = load_run(folder)
    else:
        resume = same and (folder / CHECKPOINT_NAME).is_file()  # resuming needs a checkpoint
        result = train(config, folder, resume=resume, overwrite=not resume, progress=False)
        image_shape = result.config.image_shape
        assert image_shape is not None  # the experiment trains on named data sets
        run = LoadedRun(model_for_config(result.config, image_shape)[0], result.state, result.config)
    records = read_metrics_log(folder / "metrics.jsonl")
    quality = json.loads((folder / "quality.json").read_text())["results"]
    rates = [r["images_per_s"] for r in records[1:]]
    return {
        "run": run,
        "module": run.module,
        "params": run.state.ema_params,
        "eps_fn": run.eps_fn,
        "config": config,
        "weights": None,
        "cached": cached,
        "train_seconds": float(records[-1]["time_s"]) if records else float("nan"),
        "images_per_s": float(np.median(rates)) if rates else float("nan"),
        "quality": quality,
        "sample_quality": run_sample_quality(folder, step=int(run.state.step)),
    }


def _claims(result: ModelAnalysis) -> list[dict[str, Any]]:
    return [c._asdict() for c in result.claims]


def _model_summary(result: ModelAnalysis) -> dict[str, Any]:
    """The few numbers the comparison tables need, from one model's summary."""
    s = result.summary
    steps = s["steps"]
    return {
        "t": s["t"],
        "kappa_diag_mean": steps["kappa_diag_mean"]["mean"],
        "delta_cross_mean": steps["delta_cross_mean"]["mean"],
        "delta_cross_mean_lo": steps["delta_cross_mean"]["lo"],
        "delta_cross_mean_hi": steps["delta_cross_mean"]["hi"],
        "violations": steps["violations"]["mean"],
        "mean_violations": float(np.mean(steps["violations"]["mean"])),
        "crossover_window": s["crossover_window"],
        "pc_windows": {name: r["crossover_window"] for name, r in (s.get("pc_readings") or {}).items() if r},
        "verdicts": {c.name: c.verdict for c in result.claims},
    }


def _quality_value(quality: dict[str, Any], *keys: str) -> float:
    """``quality[keys[0]][keys[1]]...`` as a float, NaN where a card or run lacks it."""
    value: Any = quality
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else float("nan")


def compute(
    out: Path, *, quick: bool, full: bool, retrain: bool = False
) -> tuple[dict[str, Any], dict[str, ModelAnalysis]]:
    mode, cfg = mode_config(quick=quick, full=full)
    shipped = shipped_models(mode, retrain=retrain)
    if shipped is None:
        runs = {name: trained_run(name, config, out / "runs") for name, config in run_configs(cfg).items()}
    else:
        runs = {name: shipped_run(pretrained(model)) for name, model in shipped.items()}
    configs: dict[str, TrainConfig] = {name: entry["config"] for name, entry in runs.items()}
    dit_config = configs["dit"]
    sched = named_schedule(dit_config.schedule, dit_config.T)
    train_images, _ = load_train_test(dit_config)
    patch_size = dit_config.patch_size
    assert patch_size is not None  # the configs are resolved (patch_size filled in)
    image_shape = tuple(train_images.shape[1:])
    analyses: dict[str, ModelAnalysis] = {}

    def analyze(eps_fn: EpsFn, attention_fn: Any, sample_quality: dict[str, Any]) -> ModelAnalysis:
        return analyze_model(
            eps_fn,
            sched,
            train_images,
            patch_size=patch_size,
            steps=cfg["chain_steps"],
            samples=cfg["trajectories"],
            seed=SEED,
            attention_fn=attention_fn,
            sample_quality=sample_quality,
            chunk=default_chunk(),
            progress=True,  # stderr: the cost, a bar over the trajectories and a time estimate
        )

    for name, entry in runs.items():
        attention_fn = attention_fn_if_any(entry["module"], entry["params"], image_shape)
        analyses[name] = analyze(entry["eps_fn"], attention_fn, entry["sample_quality"])
    data = np.asarray(train_images, np.float32)
    analyses["empirical"] = analyze(
        empirical_denoiser(sched, data),
        empirical_attention(sched, data),
        reference_sample_quality("the empirical-optimal denoiser of the training crops (no weights)"),
    )
    results = {
        "mode": mode,
        "source": "trained" if shipped is None else "shipped",
        "weights": [e["weights"] for e in runs.values() if e["weights"] is not None],
        "settings": cfg,
        "mu_values": list(mu_values(cfg)),
        "image_shape": list(image_shape),
        "patch_size": patch_size,
        "num_patches": analyses["dit"].summary["num_patches"],
        "models": {
            name: {**_model_summary(a), "claims": _claims(a), "sample_quality": a.sample_quality}
            for name, a in analyses.items()
        },
        "training": {
            name: {
                "steps": configs[name].steps,
                "mu": configs[name].mu,
                "model": configs[name].model,
                "train_seconds": e["train_seconds"],
                "images_per_s": e["images_per_s"],
                "cached": e["cached"],
                "weights": e["weights"],
                "fd_patches": _quality_value(e["quality"], "model", "fd_patches"),
                "fd_patches_train_crops": _quality_value(e["quality"], "train_crops", "fd_patches"),
                "fd_patches_noise": _quality_value(e["quality"], "noise", "fd_patches"),
                "memorisation_ratio": _quality_value(e["quality"], "memorisation_ratio"),
                "fraction_outside_data_range": _quality_value(e["quality"], "fraction_outside_data_range"),
                "fraction_outside_1.05": _quality_value(e["quality"], "fraction_outside_1.05"),
            }
            for name, e in runs.items()
        },
    }
    return results, analyses


LABELS = {"dit": "DiT", "unet": "UNet", "empirical": "empirical-optimal"}


def _label(name: str) -> str:
    if name.startswith("dit_mu"):
        return f"DiT, mu = {name[6:]}"
    return LABELS.get(name, name)


def _overlay_figure(analyses: dict[str, ModelAnalysis], names: list[str], title: str):
    fig, _ = plotting.new_figure(figsize=(10.5, 4.0))
    fig.clear()  # two panels instead of new_figure's one
    left, right = fig.subplots(1, 2)
    for i, name in enumerate(names):
        s = analyses[name].summary
        t = np.asarray(s["t"])
        for ax, key in ((left, "kappa_diag_mean"), (right, "delta_cross_mean")):
            stats = s["steps"][key]
            ax.plot(t, stats["mean"], color=f"C{i}", label=_label(name))
            ax.fill_between(t, stats["lo"], stats["hi"], color=f"C{i}", alpha=0.2, linewidth=0)
    for ax, what in ((left, "kappa_diag (patch mean)"), (right, "delta_cross (patch mean)")):
        ax.set_yscale("log")
        ax.set_ylabel(what)
        ax.set_xlabel("t (chain runs right to left)")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    left.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    fig.suptitle(title)
    return fig


def _figures(out: Path, analyses: dict[str, ModelAnalysis]) -> list[str]:
    paths = []
    for name, analysis in analyses.items():
        write_analysis(out / name, analysis, title=_label(name), config={"experiment": NAME, "model": name}, seed=SEED)
        paths.append(f"{NAME}/{name}/block_norms.png")
    models = [n for n in ("dit", "unet", "empirical") if n in analyses]
    plotting.save_figure(
        _overlay_figure(analyses, models, "DiT, UNet and the empirical-optimal denoiser"), out / "models.png"
    )
    reference = "dit_mu0" if "dit_mu0" in analyses else "dit"
    regularised = [reference] + [n for n in analyses if n.startswith("dit_mu") and n != "dit_mu0"]
    figures = [f"{NAME}/models.png"]
    if len(regularised) > 1:  # no regularised model is shipped: the comparison needs training
        plotting.save_figure(
            _overlay_figure(analyses, regularised, "DiT trained with the PIFS regulariser"), out / "regulariser.png"
        )
        figures.append(f"{NAME}/regulariser.png")
    return [*figures, f"{NAME}/dit/release_map.png", f"{NAME}/dit/entropy_coupling.png"]


def _window(window: dict[str, float] | None) -> str:
    return "none" if window is None else f"[{window['t_lower']:g}, {window['t_upper']:g}]"


def render_markdown(results: dict[str, Any], analyses: dict[str, ModelAnalysis]) -> str:
    """The report section: the per-model claims table (every judged verdict with its model's
    sample-quality caveat, :func:`pifs_jax.analysis.report.marked_verdict`) and the comparisons."""
    cfg = results["settings"]
    models = [n for n in ("dit", "unet", "empirical") if n in analyses]
    training = results["training"]
    if results["source"] == "shipped":
        models_line = (
            "the models shipped with the package, nothing trained: "
            + "; ".join(
                f"{_label(n)} `{training[n]['weights']['name']}` (sha256 `{training[n]['weights']['sha256']}`, "
                f"trained {training[n]['steps']} steps)"
                for n in ("dit", "unet")
                if n in training
            )
            + " (their cards: pifs_jax.models.pretrained.read_card). "
        )
    else:
        models_line = (
            f"DiT trained {training['dit']['steps']} steps, UNet "
            f"{training['unet']['steps'] if 'unet' in training else 0} steps (the quick preset trains 4000: these models are far from converged "
            "unless the mode is full). "
        )
    lines = [
        f"Mode **{results['mode']}**: {cfg['trajectories']} trajectories of {cfg['chain_steps']} DDIM steps per model, "
        f"{results['image_shape'][0]}x{results['image_shape'][1]} crops, {results['num_patches']} patches of "
        f"{results['patch_size']}x{results['patch_size']}; "
        + models_line
        + "Fraction of sample values outside the data range [-1, 1]: "
        + ", ".join(
            f"{_label(n)} {training[n]['fraction_outside_data_range']:.2f}"
            if np.isfinite(training[n]["fraction_outside_data_range"])
            else f"{_label(n)} {training[n]['fraction_outside_1.05']:.4f} outside [-1.05, 1.05] (its card)"
            for n in ("dit", "unet")
            if n in training
        )
        + " (a large fraction means the chain diverges from the data and the trajectories analysed are not those of "
        "a working sampler: then the verdicts below describe an unconverged model, not the paper's claims). "
        "Definitions and verdict rules: docs/theory.md section 11, fixed before any model "
        "was analysed. Intervals: bootstrap 95 % over trajectories.",
        "",
        "**Claims, per model** (verdict: what we measured):",
        "",
    ]
    caveats = {n: verdict_caveat(analyses[n]) for n in models}
    lines[-2:-2] = [  # before the claims table, each its own paragraph
        line
        for n in models
        if caveats[n]
        for line in (f"**Caveat, {_label(n)}: {caveats[n]}**; its verdicts carry it (docs/theory.md section 11).", "")
    ]
    headers = ["claim", "paper"] + [_label(n) for n in models]
    rows = []
    first = analyses[models[0]].claims
    for i, claim in enumerate(first):
        rows.append(
            [claim.name.replace("_", " "), claim.paper]
            + [
                f"**{marked_verdict(analyses[n].claims[i].verdict, caveats[n])}**: {analyses[n].claims[i].ours}"
                for n in models
            ]
        )
    lines.append(markdown_table(headers, rows))
    counts = {n: sum(c.verdict == "holds" for c in analyses[n].claims) for n in models}
    marks = {n: f" [{caveats[n]}]" if caveats[n] else "" for n in models}
    lines += [
        "",
        "Claims that hold: " + ", ".join(f"{_label(n)} {counts[n]} of {len(first)}{marks[n]}" for n in models) + ".",
        "",
        "(PC) crossover window under each reading of docs/theory.md section 11 (A: block norms; "
        "D: suppression-corrected factor along v_k, the verdict's where it applies; I: projected coupling): "
        + "; ".join(
            f"{_label(n)} "
            + ", ".join(
                f"{name} {_window(r['crossover_window'])}"
                for name, r in (analyses[n].summary.get("pc_readings") or {}).items()
                if r is not None
            )
            for n in models
        )
        + ".",
        "",
        "**Beyond the paper (a): the PIFS regulariser** (DiT, same seed, data and steps):",
        "",
    ]
    reference = "dit_mu0" if "dit_mu0" in analyses else "dit"
    rows = []
    regularised = [n for n in analyses if n.startswith("dit_mu") and n != "dit_mu0"]
    if not regularised:
        lines[-2] = (
            "**Beyond the paper (a): the PIFS regulariser**: not run. No model trained with the regulariser is "
            "shipped; `pifs-jax reproduce --only two_regimes --retrain` trains the DiT with mu in "
            f"{{{', '.join(f'{mu:g}' for mu in MU_VALUES)}}} beside mu = 0 and compares them. The shipped DiT:"
        )
    for name in [reference, *regularised]:
        m, tr = results["models"][name], training[name]
        rows.append(
            [
                _label(name).replace("DiT, ", "") if name != reference else "mu = 0",
                format_value(float(np.mean(m["delta_cross_mean"])), digits=4),
                format_value(m["delta_cross_mean"][-1], digits=4),
                _window(m["crossover_window"]),
                format_value(m["mean_violations"], digits=3),
                format_value(tr["fd_patches"], digits=4),
                format_value(tr["fraction_outside_data_range"], digits=3),
                format_value(tr["memorisation_ratio"], digits=3),
                format_value(tr["train_seconds"], digits=3),
                format_value(tr["images_per_s"], digits=4),
            ]
        )
    lines.append(
        markdown_table(
            [
                "regulariser",
                "delta_cross (mean over steps)",
                "delta_cross at the last step",
                "crossover window",
                "mean V_t",
                "Frechet patch distance",
                "samples outside [-1, 1]",
                "memorisation ratio",
                "training s",
                "images/s",
            ],
            rows,
        )
    )
    lines += [
        "",
        f"Frechet patch distance to the test crops of the training crops (the floor): "
        f"{format_value(training['dit']['fd_patches_train_crops'], digits=4)}; of N(0, I) noise clipped to "
        f"[-1, 1] (a model that learned nothing): {format_value(training['dit']['fd_patches_noise'], digits=4)}.",
        "",
        "**Beyond the paper (b): DiT against UNet** on the same data: "
        + "; ".join(
            f"{_label(n)}: crossover window {_window(results['models'][n]['crossover_window'])}, "
            f"{counts[n]} claims hold{marks[n]}"
            for n in models
        )
        + ". Per-model tables, figures and intervals: "
        f"`{NAME}/<model>/analysis.md`.",
        "",
        (
            "Runs cached in `two_regimes/runs/` (a second reproduction loads them); training seconds are those "
            "of the run as trained (compilation included; the machine may have been loaded)."
            if results["source"] == "trained"
            else "Training seconds and sample quality are those on the shipped models' cards (measured when they "
            "were trained)."
        ),
    ]
    return "\n".join(lines)


def run(out_dir: Path, *, quick: bool = False, full: bool = False, retrain: bool = False) -> dict[str, Any]:
    """Analyse the shipped models (or train / load the cached runs), write the results and figures, return the report section.

    The shipped models of the mode (:data:`SHIPPED`) are analysed when they all exist, unless
    ``retrain`` (train from scratch, the runs cached under ``<out>/two_regimes/runs/``) or
    ``full`` (always trains). The section's ``"weights"`` lists the shipped weights used.

    ``quick``: a few training steps on 8x8 digits (2x2 patches), no UNet, 2 trajectories of 3 steps (the
    experiment's code path, for the tests; the numbers mean nothing).
    ``full``: the quick preset's 4000 training steps, 64 trajectories of 50 steps (on a GPU: the
    32x32 models, 8x8 patches, 20000 steps).
    """
    out = Path(out_dir) / NAME
    results, analyses = compute(out, quick=quick, full=full, retrain=retrain)
    figures = _figures(out, analyses)
    write_result_json(
        out / f"{NAME}.json",
        results,
        config={
            "experiment": NAME,
            "quick": quick,
            "full": full,
            "retrain": retrain,
            "source": results["source"],
            "weights": results["weights"],
            "mu_values": results["mu_values"],
            **results["settings"],
        },
        seed=SEED,
    )
    holds = {
        n: sum(c.verdict == "holds" for c in analyses[n].claims) for n in ("dit", "unet", "empirical") if n in analyses
    }
    total = len(analyses["dit"].claims)
    marks = {n: f" [{caveat}]" if (caveat := verdict_caveat(analyses[n])) else "" for n in holds}
    return {
        "markdown": render_markdown(results, analyses),
        "figures": figures,
        "summary": "claims holding: " + ", ".join(f"{_label(n)} {k}/{total}{marks[n]}" for n, k in holds.items()),
        "results": results,
        "weights": results["weights"],
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="a few training steps, 2 short trajectories", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
