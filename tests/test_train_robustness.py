"""`pifs-jax train` under hostile input: each test feeds one case and checks the refusal or the output.

Cases: ``--resume`` with nothing to resume, ``--overwrite`` over an existing run, ``--out`` an
existing file or a read-only location (train and geometry), samples that leave the data range
(range and fraction in ``quality.json``, clipping for display only, ``samples.npz``, ``loss.png``,
the sampling progress bar), ``--set FIELD=VALUE`` for every TrainConfig field, ``--preset``
and its deprecated alias ``--config``, and extending a finished run with a larger ``--steps``.

Training runs use the tiny conv net of ``test_training.py`` on 8x8 images (seconds); the CLI
tests that need no training replace :func:`pifs_jax.models.training.train` by a recorder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import TinyEps, tiny_config, tiny_data, tiny_init

from pifs_jax import cli
from pifs_jax.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_checkpoint_header, save_checkpoint
from pifs_jax.cli import train as train_cli
from pifs_jax.grids import uniform_grid
from pifs_jax.loop import Checkpointing
from pifs_jax.models import quality
from pifs_jax.models import training as tr
from pifs_jax.schedules import named_schedule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(**overrides):
    """The file's tiny run: 6 steps with one warmup step (:func:`tiny_config` otherwise).

    The tests below train this configuration (or its 8-step extension), whatever their run-control
    fields (checkpoint, log, samples), so that they share two compiled training steps
    (``train_step_for`` caches them per configuration): what they check does not depend on the
    number of steps. One warmup step makes the 8-step run's learning rate differ from the 6-step
    run's from step 2 on (:func:`test_extension_recomputes_the_learning_rate_schedule`).
    """
    return tiny_config(**{"steps": 6, "warmup_steps": 1, **overrides})


def _model_and_data(cfg):
    module = TinyEps(features=8, T=cfg.T)
    data = tiny_data(96)
    return (module, tiny_init(module, (8, 8, 1))), (data[:64], data[64:])


def _tiny_train(cfg, out, **kwargs):
    model, dataset = _model_and_data(cfg)
    return tr.train(cfg, out, progress=kwargs.pop("progress", False), model=model, dataset=dataset, **kwargs)


def _error_line(capsys) -> str:
    """The one line the command wrote on stderr (asserting there is exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def recorded_train(monkeypatch):
    """Replace the library's train by a recorder: the CLI tests check the options, not a training run."""
    calls = []

    def fake_train(config, out_dir, **kwargs):
        calls.append((config, Path(out_dir), kwargs))
        return types.SimpleNamespace(
            state=types.SimpleNamespace(step=config.steps), seconds=0.0, out_dir=Path(out_dir), quality=None
        )

    monkeypatch.setattr(tr, "train", fake_train)
    return calls


# ----------------------------------------------------------------------------- --resume / --overwrite


def test_resume_with_nothing_to_resume_stops(tmp_path, capsys):
    """--resume on a missing or checkpoint-less folder: exit 2 naming --resume, nothing trained or created.

    The refusal is the library's (the folder policy of :class:`pifs_jax.run_folder.RunFolder`, inside
    ``train``), so the real ``train`` runs here: it stops before loading any data.
    """
    for out in (tmp_path / "missing", tmp_path):
        assert cli.main(["train", "--data", "digits", "--out", str(out), "--resume", "--no-progress"]) == 2
        line = _error_line(capsys)
        assert "argument --resume: nothing to resume" in line and "no checkpoint" in line, line
        assert CHECKPOINT_NAME in line and "drop --resume" in line
    assert not (tmp_path / "missing").exists() and list(tmp_path.iterdir()) == []


def test_existing_checkpoint_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    """The library's refusal (RunFolder's "refuse" policy), shown with the options the user typed."""
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"step": np.int32(3)}, config={})
    base = ["train", "--data", "digits", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(base) == 2
    line = _error_line(capsys)
    assert "argument --out:" in line and f"already holds a run ({CHECKPOINT_NAME})" in line
    assert "--resume" in line and "--overwrite" in line
    assert cli.main([*base, "--resume", "--overwrite"]) == 2
    assert "argument --overwrite: not allowed with argument --resume" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_resume_and_overwrite_reach_the_library(tmp_path, recorded_train):
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"step": np.int32(3)}, config={})
    base = ["train", "--data", "digits", "--out", str(tmp_path), "--no-progress"]
    assert cli.main([*base, "--overwrite"]) == 0
    assert recorded_train[-1][2]["overwrite"] is True and recorded_train[-1][2]["resume"] is False
    assert cli.main([*base, "--resume"]) == 0
    assert recorded_train[-1][2]["resume"] is True and recorded_train[-1][2]["overwrite"] is False


def test_overwrite_starts_afresh_and_removes_the_old_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = tiny_config(steps=10)  # an earlier run's files (its checkpoint holds a stand-in state)
    save_checkpoint(out / CHECKPOINT_NAME, {"step": np.int32(10)}, config=first.resolved().identity())
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": k, "loss": 1.0}) + "\n" for k in (5, 10)))
    for name in ("config.json", "loss.png", "samples.png", "samples_empirical.png", "samples.npz", "quality.json"):
        (out / name).write_bytes(b"first run")
    second = _config(checkpoint_every=2, log_every=2, num_samples=8)
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint\.msgpack.*overwrite=True"):
        _tiny_train(second, out)
    with pytest.raises(ValueError, match="overwrite: cannot be combined with resume"):
        _tiny_train(second, out, resume=True, overwrite=True)
    result = _tiny_train(second, out, overwrite=True, evaluate=False)
    assert int(result.state.step) == 6
    recorded = tr.recorded_config(second.resolved(), _model_and_data(second)[0])  # a (module, init) pair: model None
    assert recorded.model is None
    assert read_checkpoint_header(out / CHECKPOINT_NAME)["config"] == json.loads(json.dumps(recorded.identity()))
    assert [r["step"] for r in tr.read_metrics_log(out / "metrics.jsonl")] == [2, 4, 6]  # nothing of the first run
    # the first run's samples and scores are gone: they would describe another model
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", CHECKPOINT_NAME, "loss.png"}
    assert (out / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "config.json").read_text()) == recorded.to_dict()


# ----------------------------------------------------------------------------- --out checked before any work


@pytest.mark.parametrize("command", [["train", "--data", "digits"], ["geometry", "--schedule", "linear"]])
def test_out_that_is_an_existing_file(tmp_path, capsys, command, recorded_train):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert cli.main([*command, "--out", str(target)]) == 2
    line = _error_line(capsys)
    assert "argument --out: expected a folder, got the existing file" in line, line
    assert target.read_text() == "not a folder" and recorded_train == []
    below = target / "sub"  # a folder below the file cannot be created either
    assert cli.main([*command, "--out", str(below)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)


@pytest.mark.parametrize("command", [["train", "--data", "digits"], ["geometry", "--schedule", "linear"]])
def test_out_in_a_read_only_location(tmp_path, capsys, command, monkeypatch, recorded_train):
    """A folder the process may not write (simulated: the tests may run as root, who may write anywhere)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    for out in (locked, locked / "new"):
        assert cli.main([*command, "--out", str(out)]) == 2
        line = _error_line(capsys)
        assert "argument --out: cannot write into" in line and "read-only" in line, line
    assert list(locked.iterdir()) == [] and recorded_train == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_out_in_a_read_only_folder_without_simulation(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert cli.main(["geometry", "--schedule", "linear", "--out", str(locked / "new")]) == 2
        assert "argument --out: cannot write into" in _error_line(capsys)
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- samples outside the data range


def test_value_range_and_scores_of_unclipped_samples():
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (40, 8, 8, 1))
    samples = train[:4].copy()
    samples[0, 0, 0, 0] = 3.0
    samples[1, 2, 3, 0] = -2.5
    stats = quality.value_range(samples, train)
    assert stats["min"] == -2.5 and stats["max"] == 3.0
    assert stats["data_min"] == train.min() and stats["data_max"] == train.max()
    assert stats["fraction_outside_data_range"] == 2 / samples.size  # two of 256 values
    # the scores see the samples as drawn: sample 0 is train[0] but for one value, 3.0 - train[0, 0, 0, 0] away
    scores = quality.sample_quality(samples, train=train, test=train, patch_size=4)
    expected = abs(3.0 - train[0, 0, 0, 0]) / 8.0  # RMS over the 64 values
    clipped = abs(1.0 - train[0, 0, 0, 0]) / 8.0
    d, _ = quality.nearest_neighbour_distances(samples[:1], train)
    assert d[0] == pytest.approx(expected, rel=1e-12) and expected > clipped
    assert scores["nn_distance_min"] == 0.0  # samples 2, 3 are training images
    assert scores["min"] == -2.5 and scores["fraction_outside_data_range"] == stats["fraction_outside_data_range"]
    report = quality.quality_report(samples, train=train, test=train, patch_size=4)
    assert report["sample_range"] == [-2.5, 3.0] and report["fraction_outside_data_range"] == 2 / samples.size
    assert report["data_range"] == [train.min(), train.max()]
    assert "not clipped" in report["features"]
    # the noise ceiling stays clipped N(0, I): inside [-1, 1] by definition
    assert report["noise"]["min"] >= -1.0 and report["noise"]["max"] <= 1.0


def test_sample_figure_says_the_display_is_clipped():
    samples = np.linspace(-3.24, 3.13, 5 * 64).reshape(5, 8, 8, 1)
    data = np.linspace(-1, 1, 64 * 3).reshape(3, 8, 8, 1)
    fig = quality.sample_figure(samples, title="EMA samples", data=data)
    title = fig.axes[0].get_title()
    assert "clipped to [-1, 1] for display only" in title and "values in [-3.24, 3.13]" in title, title
    outside = np.mean(np.abs(samples) > 1) * 100
    assert f"{outside:.3g}% outside the data range [-1, 1]" in title
    shown = fig.axes[0].images[0].get_array()
    assert shown.min() == 0 and shown.max() == 255  # clipped to [-1, 1], then mapped to 0..255


def test_train_writes_raw_samples_range_loss_curve_and_a_progress_bar(tmp_path, capsys):
    cfg = _config(checkpoint_every=3, log_every=2, num_samples=16)
    model, dataset = _model_and_data(cfg)
    result = tr.train(cfg, tmp_path, progress=True, model=model, dataset=dataset)
    err = capsys.readouterr().err
    assert "sample and score" in err and "4/4" in err  # one model chunk, one empirical chunk, scores, files
    raw = np.load(tmp_path / "samples.npz")
    assert set(raw.files) == {"samples", "samples_empirical"}
    samples = raw["samples"]
    assert samples.shape == (16, 8, 8, 1) and samples.dtype == np.float32
    report = json.loads((tmp_path / "quality.json").read_text())["results"]
    assert report["sample_range"] == pytest.approx([float(samples.min()), float(samples.max())], rel=1e-6)
    low, high = dataset[0].min(), dataset[0].max()
    assert report["data_range"] == pytest.approx([low, high], rel=1e-6)
    expected = np.mean((samples < low) | (samples > high))
    assert report["fraction_outside_data_range"] == pytest.approx(expected, abs=1 / samples.size)
    assert result.quality["fraction_outside_data_range"] == report["fraction_outside_data_range"]
    for name in ("loss.png", "samples.png", "samples_empirical.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name


def test_metrics_log_figure():
    records = [{"step": k, "loss": 1.0 / k, "mse": 0.5 / k, "reg": 0.0, "objective": 1.0 / k} for k in (2, 4, 6)]
    fig = tr.plot_metrics_log(records, title="run")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["loss (weighted)", "eps-MSE"]  # no objective without reg
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [2, 4, 6])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.25, 0.125, 0.5 / 6])
    assert ax.get_yscale() == "log"
    same = [{"step": 1, "loss": 2.0, "mse": 2.0}]
    assert [line.get_label() for line in tr.plot_metrics_log(same).axes[0].lines] == ["loss (= eps-MSE)"]
    with pytest.raises(ValueError, match="records: expected at least one"):
        tr.plot_metrics_log([])


# ----------------------------------------------------------------------------- --set, --preset


def _field_text(value) -> str:
    return "none" if value is None else str(value)


def test_every_train_config_field_parses_from_text():
    """Each of the 28 fields round-trips through parse_field_value (the values of both presets)."""
    fields = dataclasses.fields(tr.TrainConfig)
    assert len(fields) == 28
    for preset in tr.PRESETS:
        config = tr.train_config(preset)
        for field in fields:
            value = getattr(config, field.name)
            parsed = tr.parse_field_value(field.name, _field_text(value))
            assert parsed == value and type(parsed) is type(value), (field.name, value, parsed)
    assert tr.parse_field_value("patch_size", "None") is None
    assert tr.parse_field_value("lr", "3e-4") == 3e-4 and tr.parse_field_value("ema_decay", "1") == 1.0


def test_set_reaches_the_config(tmp_path, recorded_train):
    argv = [
        "train",
        "--data",
        "digits",
        "--steps",
        "7",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--set",
        "warmup_steps=3",
        "--set",
        "lr_decay=constant",
        "--set",
        "weight_decay=0",
        "--set",
        "grad_clip=0.5",
        "--set",
        "num_test=16",
        "--set",
        "data_seed=4",
        "--set",
        "size=quick",
        "--set",
        "patch_size=none",
    ]
    assert cli.main(argv) == 0
    config = recorded_train[-1][0]
    assert (config.warmup_steps, config.lr_decay, config.weight_decay, config.grad_clip) == (3, "constant", 0.0, 0.5)
    assert (config.num_test, config.data_seed, config.steps, config.patch_size) == (16, 4, 7, 2)  # 8 / 4
    assert config == tr.train_config(
        "quick",
        data="digits",
        steps=7,
        warmup_steps=3,
        lr_decay="constant",
        weight_decay=0.0,
        grad_clip=0.5,
        num_test=16,
        data_seed=4,
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ("stepz=3", "argument --set: stepz=3: not a TrainConfig field; expected one of model, size,"),
        ("steps=abc", "argument --set: steps=abc: expected an integer, got 'abc'"),
        ("steps=2.5", "argument --set: steps=2.5: expected an integer, got '2.5'"),
        ("steps=0", "argument --set: steps=0: expected a positive integer, got 0"),
        ("lr=nan", "argument --set: lr=nan: expected a finite number, got 'nan'"),
        ("lr=-1", "argument --set: lr=-1: expected a finite number > 0, got -1.0"),
        ("ema_decay=1", "argument --set: ema_decay=1: expected a number in [0, 1), got 1.0"),
        ("lr_decay=linear", "argument --set: lr_decay=linear: expected one of cosine, constant, got 'linear'"),
        ("data=cifar", "argument --set: data=cifar: expected one of photos16, photos32, digits, got 'cifar'"),
        ("schedule=foo", "argument --set: schedule=foo: expected one of linear,"),
        ("patch_size=x", "argument --set: patch_size=x: expected an integer or none, got 'x'"),
        ("warmup_steps", "argument --set: expected FIELD=VALUE, got 'warmup_steps'"),
        ("=3", "argument --set: expected FIELD=VALUE, got '=3'"),
    ],
)
def test_bad_set_items(tmp_path, capsys, recorded_train, item, message):
    assert cli.main(["train", "--out", str(tmp_path), "--set", item]) == 2
    assert message in _error_line(capsys)
    assert recorded_train == []


def test_parse_assignments():
    parsed = train_cli.parse_assignments(["lr=1e-3", "patch_size = none", "lr=2e-3"], {"steps": 5, "lr": None})
    assert parsed == {"lr": (2e-3, "lr=2e-3"), "patch_size": (None, "patch_size = none")}  # the last item wins
    with pytest.raises(ValueError, match="--set: steps=6: steps is also given by --steps"):
        train_cli.parse_assignments(["steps=6"], {"steps": 5})


def test_set_and_its_own_option_conflict(tmp_path, capsys, recorded_train):
    assert cli.main(["train", "--out", str(tmp_path), "--steps", "5", "--set", "steps=6"]) == 2
    assert "argument --set: steps=6: steps is also given by --steps; give it once" in _error_line(capsys)
    assert recorded_train == []


def test_preset_and_the_deprecated_config_alias(tmp_path, capsys, recorded_train):
    out = ["--out", str(tmp_path / "r"), "--no-progress"]
    assert cli.main(["train", "--preset", "full", *out]) == 0
    assert recorded_train[-1][0] == tr.train_config("full")
    assert "deprecated" not in capsys.readouterr().err
    assert cli.main(["train", "--config", "full", *out]) == 0  # still works
    assert recorded_train[-1][0] == tr.train_config("full")
    note = capsys.readouterr().err
    assert "--config is deprecated, use --preset full" in note
    assert cli.main(["train", *out]) == 0
    assert recorded_train[-1][0] == tr.train_config("quick")
    assert cli.main(["train", "--preset", "quick", "--config", "full", *out]) == 2
    assert "argument --preset: 'quick' contradicts --config 'full'" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "huge", *out]) == 2
    assert "argument --preset: invalid choice: 'huge'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- extending a finished run


def test_extending_a_finished_run(tmp_path, capsys):
    """6 steps, then resume with steps=8: the run continues; its first 6 steps are kept; 4 or 10 is refused."""
    cfg = _config(checkpoint_every=3, log_every=1, num_samples=0)
    out = tmp_path / "run"
    _tiny_train(cfg, out)
    kept = tr.read_metrics_log(out / "metrics.jsonl")
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="another configuration: steps = 6 in the checkpoint, 4 requested"):
        _tiny_train(dataclasses.replace(cfg, steps=4), out, resume=True)  # shortening is refused
    with pytest.raises(ValueError, match=r"another configuration: lr = 0\.003 in the checkpoint, 0\.01 requested"):
        _tiny_train(dataclasses.replace(cfg, steps=10, lr=0.01), out, resume=True)  # steps only
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # the run is left alone

    result = _tiny_train(dataclasses.replace(cfg, steps=8), out, resume=True, progress=True)
    assert "extending the run from 6 to 8 steps" in capsys.readouterr().out
    assert int(result.state.step) == 8
    assert read_checkpoint_header(out / CHECKPOINT_NAME)["config"]["steps"] == 8
    assert json.loads((out / "config.json").read_text())["steps"] == 8
    records = tr.read_metrics_log(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[:6] == kept  # the steps already run, bit for bit (their log lines untouched)


def test_a_killed_extension_leaves_no_old_samples_beside_the_new_checkpoint(tmp_path, capsys):
    """A finished 6-step run with samples and scores, extended to 8 steps and killed at step 7
    (Ctrl-C from the callback: the checkpoint of step 7 is saved): its quality.json and samples.*
    used to stay beside that checkpoint, unmarked. Now they are in stale/step-6/, unchanged, before
    training continues; the completed extension writes fresh ones (scored at step 8)."""
    cfg = _config(checkpoint_every=2, log_every=1, num_samples=16)
    out = tmp_path / "run"
    _tiny_train(cfg, out)
    described = ("samples.png", "samples_empirical.png", "samples.npz", "quality.json")
    before = {name: (out / name).read_bytes() for name in (*described, "loss.png")}
    longer = dataclasses.replace(cfg, steps=8)

    def kill(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_train(longer, out, resume=True, callback=kill)
    assert read_checkpoint_header(out / CHECKPOINT_NAME)["step"] == 7
    assert [name for name in described if (out / name).exists()] == []  # nothing unmarked beside step 7
    stale = out / tr.STALE_DIR / "step-6"
    assert {name: (stale / name).read_bytes() for name in before} == before  # kept, whole
    assert json.loads((stale / "quality.json").read_text())["config"]["steps"] == 6
    assert "moved to stale/step-6/" in capsys.readouterr().err

    result = _tiny_train(longer, out, resume=True)  # completed: fresh results, the old ones stay set aside
    assert int(result.state.step) == 8
    assert json.loads((out / "quality.json").read_text())["config"]["steps"] == 8
    assert all((out / name).is_file() for name in described)
    assert {name: (stale / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (out / tr.STALE_DIR).iterdir()) == ["step-6"]

    fresh = dataclasses.replace(cfg, num_samples=0)
    _tiny_train(fresh, out, overwrite=True)  # a fresh run deletes the old run's set-aside results too
    assert not (out / tr.STALE_DIR).exists()


@pytest.mark.slow
def test_extension_recomputes_the_learning_rate_schedule(tmp_path):
    """6 steps extended to 8 equal the 6-step state stepped 2 times with the optimiser rebuilt for
    8 steps (bit for bit), and differ from a run started with 8 steps (three compilations: the 6- and
    8-step training steps, shared with the other tests here, and the step built by hand)."""
    short = _config(checkpoint_every=3, log_every=3, num_samples=0)
    longer = dataclasses.replace(short, steps=8).resolved()
    out = tmp_path / "run"
    model, dataset = _model_and_data(short)
    _tiny_train(short, out)
    shutil.copy(out / CHECKPOINT_NAME, tmp_path / "six.msgpack")
    extended = _tiny_train(longer, out, resume=True)

    module, init_fn = model
    optimizer, target = tr.initial_train_state(longer, init_fn)
    # a (module, init_fn) pair is trained unrecorded: the checkpoint's identity has model = None
    recorded = tr.recorded_config(short.resolved(), model)
    state = load_checkpoint(tmp_path / "six.msgpack", target, config=recorded.identity())
    tables = tr.loss_tables(
        named_schedule(longer.schedule, longer.T),
        weighting=longer.weighting,
        gamma=longer.min_snr_gamma,
        grid=uniform_grid(longer.T, longer.sample_steps),
    )
    step = tr.make_train_step(
        tr.module_apply_fn(module),
        optimizer,
        tables,
        batch_size=longer.batch_size,
        ema_decay=longer.ema_decay,
        mu=longer.mu,
        patch_size=longer.patch_size,
        probes=longer.probes,
    )
    data = jnp.asarray(dataset[0])
    for _ in range(2):
        state, _ = step(state, data)
    for got, want in zip(jax.tree_util.tree_leaves(extended.state), jax.tree_util.tree_leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # documented: not the run started with 8 steps (the short run's learning rate decayed to 0 at step 6)
    fresh = _tiny_train(longer, tmp_path / "fresh")
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(fresh.state.params), jax.tree_util.tree_leaves(extended.state.params), strict=True
        )
    )


@pytest.mark.slow
def test_cli_extends_a_finished_run(tmp_path, capsys):
    """The real DiT on digits: 3 steps, then --resume --steps 5 (about 40 s: two compilations)."""
    out = tmp_path / "dit"
    argv = [
        "train",
        "--data",
        "digits",
        "--batch-size",
        "8",
        "--set",
        "num_train=64",
        "--set",
        "warmup_steps=1",
        "--num-samples",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main([*argv, "--steps", "3"]) == 0
    # an extension killed before its first checkpoint: config.json says 5, the checkpoint 3; it loads
    config_path = out / "config.json"
    written = config_path.read_text()
    config_path.write_text(json.dumps({**json.loads(written), "steps": 5}))
    run = tr.load_run(out)
    assert int(run.state.step) == 3 and run.config.steps == 5
    config_path.write_text(written)
    assert cli.main([*argv, "--steps", "5", "--resume"]) == 0
    assert "for 5 steps" in capsys.readouterr().out
    run = tr.load_run(out)
    assert int(run.state.step) == 5 and run.config.steps == 5 and run.config.warmup_steps == 1
    assert cli.main([*argv, "--steps", "4", "--resume"]) == 2
    assert "steps = 5 in the checkpoint, 4 requested" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a full disk


@pytest.mark.slow
def test_a_full_disk_names_the_failed_write_and_the_intact_checkpoint(tmp_path, monkeypatch, capsys):
    """A checkpoint write that fails with ENOSPC once showed a raw OSError traceback. Now the library
    raises a WriteError (a ValueError naming out_dir) that names the file, the reason and the intact
    previous checkpoint; the command prints one line under --out; and the run resumes from that step."""
    import errno

    from pifs_jax import checkpoint as ckpt
    from pifs_jax.errors import WriteError

    cfg = _config(checkpoint_every=1, log_every=1, num_samples=0)
    out = tmp_path / "run"
    write = ckpt.atomic_write_bytes
    saved = []

    def disk_full_after_the_first_checkpoint(path, data):
        if saved:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(path)
        return write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", disk_full_after_the_first_checkpoint)
    with pytest.raises(WriteError, match=r"^out_dir: writing .*checkpoint\.msgpack' failed") as error:
        _tiny_train(cfg, out)
    message = str(error.value)
    assert "No space left on device (ENOSPC)" in message
    assert f"the previous checkpoint {str(out / CHECKPOINT_NAME)!r} (step 1) is intact" in message
    assert "--resume" in message and isinstance(error.value.__cause__, OSError)
    assert read_checkpoint_header(out / CHECKPOINT_NAME)["step"] == 1  # the earlier checkpoint survives
    assert not list(out.glob(".*.tmp"))  # no partial file left behind

    # the command line: one line naming --out, no traceback (the run is a stand-in: two checkpoints)
    def two_checkpoints(config, out_dir, **kwargs):
        checkpointing = Checkpointing(Path(out_dir) / CHECKPOINT_NAME, 1, {"run": "stand-in"})
        for step in (1, 2):
            checkpointing.save({"step": np.int32(step)})

    saved.clear()
    with monkeypatch.context() as patch:
        patch.setattr(tr, "train", two_checkpoints)
        assert cli.main(["train", "--data", "digits", "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert line.startswith("pifs-jax train: error: argument --out: writing ") and "(ENOSPC)" in line
    assert "(step 1) is intact" in line

    # once there is room again, the run resumes from the intact checkpoint and finishes
    monkeypatch.setattr(ckpt, "atomic_write_bytes", write)
    result = _tiny_train(cfg, out, resume=True)
    assert int(result.state.step) == 6 and read_checkpoint_header(out / CHECKPOINT_NAME)["step"] == 6


def test_a_failed_log_write_names_the_log(tmp_path, monkeypatch):
    """The metrics log's append fails (EDQUOT) before any checkpoint: the error says no checkpoint exists yet."""
    import errno

    from pifs_jax.errors import WriteError
    from pifs_jax.models.training import trainer

    def quota_exceeded(path, record):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(trainer, "_append_line", quota_exceeded)
    with pytest.raises(WriteError, match=r"metrics\.jsonl' failed: .*\(EDQUOT\); no checkpoint was written yet"):
        _tiny_train(_config(checkpoint_every=2, log_every=1, num_samples=0), tmp_path / "run")
