"""Benchmark: the layers of the google/ddpm-cifar10-32 UNet, forward and backward, JAX (XLA:CPU) vs PyTorch.

Why: on the CPU the whole UNet's forward is on par with diffusers' PyTorch but its training step
(forward + backward w.r.t. every parameter) was measured 2.1x slower (BENCHMARKS.md, "Pretrained
diffusers UNet"). This script times the layers that UNet is made of, one at a time, to find which
backward carries the gap, and tries what XLA:CPU offers against it.

Layers (batch ``--batch``, float32; JAX in NHWC, PyTorch in NCHW, the same NumPy weights in both):

- ``conv3x3 C@H``: a 3x3 convolution with bias, ``C -> C`` channels on an ``H x H`` map (JAX:
  ``jax.lax.conv_general_dilated``, PyTorch: ``torch.nn.functional.conv2d``), at (128, 32),
  (256, 16), (256, 8) and (256, 32);
- ``upsample+conv3x3``: the UNet's ``Upsample2D``: nearest-neighbour x2 (JAX: ``jnp.repeat`` twice,
  as :class:`pifs_jax.models.diffusers_unet.modules.Upsample2D`; PyTorch: ``F.interpolate``) then
  a 3x3 convolution, 256 channels, 16x16 -> 32x32;
- ``groupnorm+silu C@H``: GroupNorm (32 groups, two-pass variance, eps 1e-6) then SiLU;
- ``attention 256@16``: the UNet's spatial self-attention block (GroupNorm, one head as wide as the
  map, q/k/v/out projections, residual; JAX: the package's ``AttentionBlock2D`` module).

Each layer ``y = f(x, params)`` is timed in four modes, with the loss ``sum(y^2) / 2``: ``fwd`` (the
forward alone), ``dx`` (gradient w.r.t. the input), ``dparams`` (gradient w.r.t. the weights) and
``all`` (loss and both gradients). JAX: each mode one ``jax.jit`` function, compiled before timing,
``block_until_ready``. PyTorch: ``torch.no_grad`` for ``fwd``, ``torch.autograd.grad`` otherwise,
at each intra-op thread count of ``--torch-threads`` (default 2; ``1,2`` times both, and the ratio
is taken against the faster: on a loaded 2-core machine PyTorch's OpenMP at 2 threads can be far
slower than at 1). The two frameworks are timed alternately (one JAX call,
one PyTorch call, per layer and mode, for ``--repeats`` rounds), so both see the same load; fast
calls are repeated within a timing (``inner``) to about ``--min-time`` seconds. Reported per layer
and mode: both medians and ``ratio = jax / torch`` (> 1: JAX slower). Also in JAX only: the same
layer in NCHW (``layout``) and ``all`` under ``jax.checkpoint`` (``remat``); and whether XLA put a
YNNPACK fusion (``__ynn_fusion``) in the compiled program.

``--flags`` (on by default, off with ``--quick``): each ``XLA_FLAGS`` variant of :data:`FLAG_VARIANTS` is first checked in
a subprocess (an unknown flag makes XLA abort), then the accepted ones are timed on the conv layers'
``dx``/``dparams``/``all`` in fresh subprocesses, the default included, variants taken in turn over
``--flag-rounds`` rounds; reported as each variant's median over the default's. One variant is
not a flag: the process pinned to one core (``os.sched_setaffinity``), XLA's pools then one thread.

Without PyTorch installed (it is the optional ``bench`` extra) the PyTorch half is skipped and the
JSON says so. Writes ``benchmarks/out/conv_backward.json`` (or ``--out``)::

    python benchmarks/conv_backward.py [--batch 16] [--repeats 5] [--torch-threads 1,2] [--no-flags] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.models.diffusers_unet.modules import AttentionBlock2D
from pifs_jax.results import write_result_json

GROUPS = 32
EPS = 1e-6
MODES = ("fwd", "dx", "dparams", "all")

#: ``(kind, channels, side)`` of the full run's layers (``--quick``: :data:`QUICK_CASES`).
CASES = (
    ("conv3x3", 128, 32),
    ("conv3x3", 256, 16),
    ("conv3x3", 256, 8),
    ("conv3x3", 256, 32),
    ("upsample+conv3x3", 256, 16),
    ("groupnorm+silu", 128, 32),
    ("groupnorm+silu", 256, 16),
    ("attention", 256, 16),
)
QUICK_CASES = (("conv3x3", 32, 8), ("upsample+conv3x3", 32, 4), ("groupnorm+silu", 32, 8), ("attention", 32, 4))

#: XLA_FLAGS variants tried against the default (each checked first: an unknown flag aborts XLA).
FLAG_VARIANTS = {
    "default": "",
    "ynn off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn without convolutions": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn without reduce fusions": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "xnnpack off": "--xla_cpu_use_xnnpack=false",
    "onednn on": "--xla_cpu_use_onednn=true",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "eigen single-threaded": "--xla_cpu_multi_thread_eigen=false",
    "thunk runtime off (removed flag)": "--xla_cpu_use_thunk_runtime=false",
    "matmul precision highest (JAX option)": "JAX_DEFAULT_MATMUL_PRECISION=highest",
    "one core (process pinned to CPU 0)": "PIN=0",
}
QUICK_FLAG_VARIANTS = ("default", "ynn off", "one core (process pinned to CPU 0)")


def case_name(kind: str, channels: int, side: int) -> str:
    out = side * 2 if kind == "upsample+conv3x3" else side
    return f"{kind} {channels}@{side}" + (f"->{out}" if out != side else "")


# ----------------------------------------------------------------------------- layers


def numpy_case(kind: str, channels: int, side: int, batch: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Input ``(B, H, W, C)`` and weights (NumPy float32, JAX layouts) of one layer."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, side, side, channels)).astype(np.float32)
    c = channels
    if kind in ("conv3x3", "upsample+conv3x3"):
        w = rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c)
        params = {"w": w.astype(np.float32), "b": (0.1 * rng.standard_normal(c)).astype(np.float32)}
    elif kind == "groupnorm+silu":
        params = {"scale": 1 + 0.1 * rng.standard_normal(c), "bias": 0.1 * rng.standard_normal(c)}
        params = {k: v.astype(np.float32) for k, v in params.items()}
    elif kind == "attention":
        params = {"group_norm": {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}}
        for name in ("to_q", "to_k", "to_v", "to_out_0"):
            kernel = (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)
            params[name] = {"kernel": kernel, "bias": np.zeros(c, np.float32)}
    else:
        raise ValueError(kind)
    return x, params


def jax_layer(kind: str, channels: int, *, layout: str = "NHWC") -> Callable[[jax.Array, Any], jax.Array]:
    """``f(x, params)`` in JAX; ``layout="NCHW"`` takes and returns NCHW (convolutions: OIHW kernels)."""
    if kind in ("conv3x3", "upsample+conv3x3"):
        dims = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
        spatial = (1, 2) if layout == "NHWC" else (2, 3)
        bias_shape = (1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)

        def conv(x, p):
            if kind == "upsample+conv3x3":  # as the package's Upsample2D
                x = jnp.repeat(jnp.repeat(x, 2, axis=spatial[0]), 2, axis=spatial[1])
            y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
            return y + p["b"].reshape(bias_shape)

        return conv
    if layout != "NHWC":
        raise ValueError(f"layout {layout} only for convolutions")
    if kind == "groupnorm+silu":
        import flax.linen as nn

        norm = nn.GroupNorm(num_groups=GROUPS, epsilon=EPS, use_fast_variance=False)  # as the package's UNet
        return lambda x, p: nn.silu(norm.apply({"params": p}, x))  # pyright: ignore[reportArgumentType]  # apply's union return
    if kind == "attention":
        block = AttentionBlock2D(heads=1, head_dim=channels, groups=GROUPS, eps=EPS)
        return lambda x, p: block.apply({"params": p}, x)[0]
    raise ValueError(kind)


def jax_functions(f: Callable, x: jax.Array, params: Any, *, remat: bool = False) -> dict[str, Any]:
    """The four modes of ``f`` compiled for ``(x, params)``: forward, d/dx, d/dparams, (loss, both gradients).

    Each value is ``(call, ynn_fusions)``: the compiled executable bound to the arguments, and how
    many YNNPACK fusions (``__ynn_fusion``) XLA:CPU put in its program.
    """
    g = jax.checkpoint(f) if remat else f

    def loss(x, p):
        y = g(x, p)
        return 0.5 * jnp.sum(y * y)

    modes = {
        "fwd": g,
        "dx": jax.grad(loss, 0),
        "dparams": jax.grad(loss, 1),
        "all": jax.value_and_grad(loss, (0, 1)),
    }
    out = {}
    for mode, fn in modes.items():
        compiled = jax.jit(fn).lower(x, params).compile()
        ynn = compiled.as_text().count("__ynn_fusion")  # pyright: ignore[reportOptionalMemberAccess]
        out[mode] = (lambda compiled=compiled: compiled(x, params), ynn)
    return out


def to_nchw(x: np.ndarray, params: dict) -> tuple[np.ndarray, dict]:
    """NHWC input / HWIO kernel -> NCHW / OIHW (convolutions)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), {
        "w": np.ascontiguousarray(params["w"].transpose(3, 2, 0, 1)),
        "b": params["b"],
    }


def torch_functions(kind: str, x: np.ndarray, params: dict, threads: int) -> dict[str, Callable]:
    """The four modes of the same layer in PyTorch (NCHW, autograd), closures over leaf tensors."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    if kind in ("conv3x3", "upsample+conv3x3"):
        w = torch.from_numpy(np.ascontiguousarray(params["w"].transpose(3, 2, 0, 1))).requires_grad_(True)
        b = torch.from_numpy(params["b"].copy()).requires_grad_(True)
        weights = [w, b]

        def conv(x):
            if kind == "upsample+conv3x3":
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return F.conv2d(x, w, b, padding=1)

        f = conv

    elif kind == "groupnorm+silu":
        scale, bias = (torch.from_numpy(params[k].copy()).requires_grad_(True) for k in ("scale", "bias"))
        weights = [scale, bias]

        def norm(x):
            return F.silu(F.group_norm(x, GROUPS, scale, bias, EPS))

        f = norm

    elif kind == "attention":
        gn = [torch.from_numpy(params["group_norm"][k].copy()).requires_grad_(True) for k in ("scale", "bias")]
        lin = {
            name: [torch.from_numpy(params[name][k].copy()).requires_grad_(True) for k in ("kernel", "bias")]
            for name in ("to_q", "to_k", "to_v", "to_out_0")
        }
        weights = gn + [t for pair in lin.values() for t in pair]

        def attention(x):  # diffusers' Attention with residual_connection, one head (NCHW in and out)
            b_, c, h, w_ = x.shape
            u = F.group_norm(x, GROUPS, gn[0], gn[1], EPS).reshape(b_, c, h * w_).transpose(1, 2)
            q, k, v = (u @ lin[n][0] + lin[n][1] for n in ("to_q", "to_k", "to_v"))
            attn = torch.softmax((q @ k.transpose(1, 2)) / np.sqrt(c), dim=-1)
            out = (attn @ v) @ lin["to_out_0"][0] + lin["to_out_0"][1]
            return out.transpose(1, 2).reshape(b_, c, h, w_) + x

        f = attention

    else:
        raise ValueError(kind)

    def loss():
        y = f(xt)
        return 0.5 * (y * y).sum()

    def fwd():
        with torch.no_grad():
            return f(xt)

    return {
        "fwd": fwd,
        "dx": lambda: torch.autograd.grad(loss(), [xt]),
        "dparams": lambda: torch.autograd.grad(loss(), weights),
        "all": lambda: torch.autograd.grad(loss(), [xt, *weights]),
        "_forward_nhwc": lambda: fwd().detach().numpy().transpose(0, 2, 3, 1),
    }


# ----------------------------------------------------------------------------- timing


def _once(fn: Callable[[], Any], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / inner


def _inner(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per timing so one timing lasts about ``min_time`` (after a warm-up call)."""
    jax.block_until_ready(fn())
    once = _once(fn, 1)
    return int(min(50, max(1, round(min_time / max(once, 1e-6)))))


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, min_time: float) -> dict[str, dict[str, Any]]:
    """Median seconds per call of each of ``fns``, all timed in turn in every round."""
    inner = {name: _inner(fn, min_time) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_once(fn, inner[name]))
    return {
        name: {"median_s": float(np.median(ts)), "min_s": float(np.min(ts)), "times_s": ts, "inner": inner[name]}
        for name, ts in times.items()
    }


# ----------------------------------------------------------------------------- the comparison


def compare_case(
    kind: str,
    channels: int,
    side: int,
    *,
    batch: int,
    repeats: int,
    min_time: float,
    torch_threads: tuple[int, ...],
    jax_variants: bool = True,
) -> dict[str, Any]:
    """One layer: JAX (NHWC; NCHW and remat for convolutions / all) and PyTorch, every mode, interleaved.

    PyTorch runs at every count of ``torch_threads``; the ratio is against its fastest count.
    """
    x, params = numpy_case(kind, channels, side, batch)
    xj, pj_ = jnp.asarray(x), jax.tree.map(jnp.asarray, params)
    f = jax_layer(kind, channels)
    jfns = jax_functions(f, xj, pj_)
    calls: dict[str, Callable[[], Any]] = {f"jax {m}": call for m, (call, _) in jfns.items()}
    out: dict[str, Any] = {"kind": kind, "channels": channels, "side": side, "batch": batch}
    out["ynn_fusions"] = {m: ynn for m, (_, ynn) in jfns.items()}
    if jax_variants:
        calls["jax all remat"] = jax_functions(f, xj, pj_, remat=True)["all"][0]
    if jax_variants and kind in ("conv3x3", "upsample+conv3x3"):
        xn, pn = to_nchw(x, params)
        nfns = jax_functions(jax_layer(kind, channels, layout="NCHW"), jnp.asarray(xn), jax.tree.map(jnp.asarray, pn))
        calls.update({f"jax-nchw {m}": call for m, (call, _) in nfns.items()})
    try:
        import torch
    except ImportError:
        torch = None
        out["torch"] = "skipped: torch not installed"
    threads: tuple[int, ...] = torch_threads if torch is not None else ()
    if torch is not None and threads:
        tfns = {n: torch_functions(kind, x, params, n) for n in threads}
        jax_calls, calls = calls, {}
        for m in MODES:  # in each round: JAX mode m, then PyTorch mode m at each thread count, ...
            calls[f"jax {m}"] = jax_calls.pop(f"jax {m}")
            for n in threads:
                calls[f"torch{n} {m}"] = lambda fn=tfns[n][m], n=n: (torch.set_num_threads(n), fn())[1]
        calls.update(jax_calls)  # ... then the JAX-only variants
        torch.set_num_threads(threads[0])
        reference = tfns[threads[0]]["_forward_nhwc"]()
        jax_forward = np.asarray(jfns["fwd"][0]())
        out["max_abs_difference_forward"] = float(np.max(np.abs(jax_forward - reference)))
    timed = interleaved(calls, repeats, min_time)
    out["load_average"] = os.getloadavg()
    rows = {}
    for m in MODES:
        row: dict[str, Any] = {"jax_median_s": timed[f"jax {m}"]["median_s"]}
        if threads:
            by = {n: timed[f"torch{n} {m}"]["median_s"] for n in threads}
            fastest = min(by, key=lambda n: by[n])
            row["torch_median_s"], row["torch_threads"] = by[fastest], fastest
            row["torch_median_s_by_threads"] = {str(n): t for n, t in by.items()}
            row["ratio_jax_over_torch"] = row["jax_median_s"] / row["torch_median_s"]
            row["ratio_by_torch_threads"] = {str(n): row["jax_median_s"] / t for n, t in by.items()}
        if f"jax-nchw {m}" in timed:
            row["jax_nchw_median_s"] = timed[f"jax-nchw {m}"]["median_s"]
            row["nchw_over_nhwc"] = row["jax_nchw_median_s"] / row["jax_median_s"]
        rows[m] = row
    if "jax all remat" in timed:
        rows["all"]["jax_remat_median_s"] = timed["jax all remat"]["median_s"]
        rows["all"]["remat_over_plain"] = rows["all"]["jax_remat_median_s"] / rows["all"]["jax_median_s"]
    out["modes"] = rows
    out["timings"] = timed
    return out


# ----------------------------------------------------------------------------- XLA_FLAGS variants


def _env_for(variant: str) -> dict[str, str]:
    env = dict(os.environ)
    setting = FLAG_VARIANTS[variant]
    if setting.startswith("PIN="):
        pass  # the process's CPU affinity, set by _python
    elif setting.startswith("JAX_"):
        key, value = setting.split("=", 1)
        env[key] = value
    elif setting:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {setting}".strip()
    return env


def _python(variant: str, code: str) -> list[str]:
    """``python -c code``, first pinned to one CPU for a ``PIN=`` variant (before JAX starts its pools)."""
    setting = FLAG_VARIANTS[variant]
    if setting.startswith("PIN=") and hasattr(os, "sched_setaffinity"):
        code = f"import os; os.sched_setaffinity(0, {{{int(setting.split('=', 1)[1])}}}); " + code
    return [sys.executable, "-c", code]


def flag_accepted(variant: str) -> tuple[bool, str]:
    """Whether this jaxlib starts with the variant's flag (unknown flags abort XLA); the stderr's last line."""
    code = "import jax, jax.numpy as jnp; jax.block_until_ready(jnp.ones(3) * 2)"
    done = subprocess.run(
        _python(variant, code), env=_env_for(variant),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    last = (done.stderr.strip().splitlines() or [""])[-1][:300]
    return done.returncode == 0, last


def child(cases: list[tuple[str, int, int]], batch: int, repeats: int, min_time: float) -> dict[str, Any]:
    """JAX only, this process's XLA_FLAGS: medians of dx, dparams, all per case (run in a subprocess)."""
    out = {}
    for kind, channels, side in cases:
        x, params = numpy_case(kind, channels, side, batch)
        xj, pj_ = jnp.asarray(x), jax.tree.map(jnp.asarray, params)
        fns = jax_functions(jax_layer(kind, channels), xj, pj_)
        timed = interleaved({m: fns[m][0] for m in ("dx", "dparams", "all")}, repeats, min_time)
        out[case_name(kind, channels, side)] = {
            m: {"median_s": t["median_s"], "ynn_fusions": fns[m][1]} for m, t in timed.items()
        }
    return out


def flag_experiment(
    variants: tuple[str, ...],
    cases: list[tuple[str, int, int]],
    *,
    batch: int,
    rounds: int,
    repeats: int,
    min_time: float,
) -> dict[str, Any]:
    """Each accepted variant in fresh subprocesses, in turn, ``rounds`` times; medians over the default's."""
    accepted = {}
    for variant in variants:
        ok, message = flag_accepted(variant)
        accepted[variant] = {"setting": FLAG_VARIANTS[variant], "accepted": ok, "stderr_last_line": message}
    usable = [v for v in variants if accepted[v]["accepted"]]
    runs: dict[str, list[dict]] = {v: [] for v in usable}
    argv = [
        os.path.abspath(__file__), "--child", json.dumps(cases), "--batch", str(batch),
        "--repeats", str(repeats), "--min-time", str(min_time),
    ]  # fmt: skip
    run_script = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    for _ in range(rounds):
        for variant in usable:
            done = subprocess.run(
                _python(variant, run_script),
                env=_env_for(variant),
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                accepted[variant]["error"] = done.stderr[-2000:]
                continue
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {}
    base = runs.get("default") or []
    for variant in usable:
        if not runs[variant]:
            continue
        per_case = {}
        for name, modes in runs[variant][0].items():
            per_case[name] = {}
            for m, first in modes.items():
                median = float(np.median([r[name][m]["median_s"] for r in runs[variant]]))
                entry = {"median_s": median, "ynn_fusions": first["ynn_fusions"]}
                if base:
                    entry["over_default"] = median / float(np.median([r[name][m]["median_s"] for r in base]))
                per_case[name][m] = entry
        summary[variant] = per_case
    return {"variants": accepted, "results": summary, "rounds": rounds, "load_average_end": os.getloadavg()}


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else ""
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per layer")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timing (fast calls repeated)")
    parser.add_argument(
        "--quick", action="store_true", help="small shapes, batch 2, 2 rounds, no NCHW/remat/flags (smoke test)"
    )
    parser.add_argument(
        "--flags", action=argparse.BooleanOptionalAction, default=None,
        help="time the XLA_FLAGS variants (default: on, off with --quick)",
    )  # fmt: skip
    parser.add_argument("--flag-rounds", type=int, default=2)
    parser.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS threads for jaxlib's LAPACK (0: default)")
    parser.add_argument(
        "--torch-threads", default="2", help="PyTorch intra-op thread counts, comma-separated (ratio: the fastest)"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch_threads = tuple(int(n) for n in str(args.torch_threads).split(","))
    run_flags = (not args.quick) if args.flags is None else args.flags
    if args.blas_threads > 0:
        pj.limit_host_threads(args.blas_threads, user_api="blas")
    if args.child is not None:
        cases = [tuple(c) for c in json.loads(args.child)]
        print(json.dumps(child(cases, args.batch, args.repeats, args.min_time)))  # pyright: ignore[reportArgumentType]
        return 0
    cases = list(QUICK_CASES if args.quick else CASES)
    batch, repeats = (2, 2) if args.quick else (args.batch, args.repeats)
    min_time = 0.005 if args.quick else args.min_time
    load_start = os.getloadavg()
    results: dict[str, Any] = {"machine": machine(), "load_average_start": load_start}
    results["xla_flags_env"] = os.environ.get("XLA_FLAGS", "")
    try:
        import torch

        results["torch"] = {"version": torch.__version__, "threads": list(torch_threads)}
    except ImportError:
        results["torch"] = "skipped: torch not installed"
    layers = {}
    for kind, channels, side in cases:
        name = case_name(kind, channels, side)
        layers[name] = compare_case(
            kind,
            channels,
            side,
            batch=batch,
            repeats=repeats,
            min_time=min_time,
            torch_threads=torch_threads,
            jax_variants=not args.quick,
        )
        row = layers[name]["modes"]
        cells = " ".join(
            f"{m} {row[m]['jax_median_s'] * 1e3:7.1f}"
            + (f"/{row[m]['torch_median_s'] * 1e3:7.1f} ms = {row[m]['ratio_jax_over_torch']:.2f}" if "torch_median_s" in row[m] else " ms")
            for m in MODES
        )  # fmt: skip
        print(f"{name:24s} {cells}  ynn {layers[name]['ynn_fusions']}  load {os.getloadavg()[0]:.1f}", flush=True)
    results["layers"] = layers
    if run_flags:
        conv_cases = [c for c in cases if c[0] in ("conv3x3", "upsample+conv3x3")]
        if not args.quick:
            conv_cases = [c for c in conv_cases if (c[1], c[2]) in ((128, 32), (256, 16))]
        variants = QUICK_FLAG_VARIANTS if args.quick else tuple(FLAG_VARIANTS)
        results["flags"] = flag_experiment(
            variants, conv_cases, batch=batch, rounds=1 if args.quick else args.flag_rounds,
            repeats=repeats, min_time=min_time,
        )  # fmt: skip
        for variant, info in results["flags"]["variants"].items():
            per_case = results["flags"]["results"].get(variant, {})
            cells = "; ".join(
                f"{name}: " + " ".join(f"{m} {e.get('over_default', float('nan')):.2f}" for m, e in modes.items())
                for name, modes in per_case.items()
            )
            print(f"flags {variant!r:42s} accepted={info['accepted']}  {cells}", flush=True)
    results["load_average_end"] = os.getloadavg()
    config = {
        "benchmark": "conv_backward", "batch": batch, "repeats": repeats, "min_time": min_time, "quick": args.quick,
        "cases": [case_name(*c) for c in cases], "blas_threads": args.blas_threads,
        "torch_threads": list(torch_threads), "flags": run_flags, "dtype": "float32", "loss": "sum(y^2)/2",
    }  # fmt: skip
    out = Path(args.out or f"benchmarks/out/conv_backward{'_quick' if args.quick else ''}.json")
    write_result_json(out, results, config=config, seed=0)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
