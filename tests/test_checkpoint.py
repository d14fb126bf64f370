"""Checkpoints: exact round trip, refusal of other configurations and damaged files, and a
training run killed with a real SIGKILL that resumes to the bit-identical result.

Every training here is one configuration (:data:`RUN`, that of the SIGKILL script), so that the
process compiles its training step once (``train_step_for`` caches it) and the uninterrupted
reference run is made once (:func:`reference_run`) for the tests that compare against it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax.models import checkpoint as ck
from pifs_jax.models import training as tr

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_training import TinyEps, tiny_config, tiny_data, tiny_init  # noqa: E402

#: The training run of every test here (and of the SIGKILL script): 60 steps, checkpoints every 20.
RUN = tiny_config(steps=60, checkpoint_every=20, log_every=5)


def _model_and_data():
    data = tiny_data(80)
    module = TinyEps(features=8, T=100)
    return (module, tiny_init(module, (8, 8, 1))), (data[:64], data[64:])


@pytest.fixture(scope="module")
def state():
    """A TrainState after one real step of :data:`RUN` (non-trivial optimiser state and EMA), float32.

    Built with the step and step-0 state that ``train`` uses for :data:`RUN` (one compilation for the file)."""
    with jax.enable_x64(False):
        (module, init_fn), (train_images, _) = _model_and_data()
        _, initial = tr.initial_train_state(RUN, init_fn)
        step = tr.train_step_for(module, RUN, patch_size=RUN.patch_size)
        return step(initial, jnp.asarray(train_images))[0]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """:data:`RUN` trained without interruption, in this process (float32): its folder and final state."""
    model, dataset = _model_and_data()
    out = tmp_path_factory.mktemp("reference")
    with jax.enable_x64(False):
        result = tr.train(RUN, out, progress=False, evaluate=False, model=model, dataset=dataset)
    return types.SimpleNamespace(out=out, state=result.state)


def _other_values(state):
    """Same structure, shapes and dtypes, other values (a fresh target to load into)."""
    return jax.tree_util.tree_map(lambda a: jnp.zeros_like(a), state)


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def _strip_timings(log):
    """The metrics log without its wall-clock fields (which differ between runs)."""
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "time_s")} for r in log]


CONFIG = tiny_config().identity()


def test_round_trip_is_exact(tmp_path, state):
    path = ck.save_checkpoint(tmp_path / "c.msgpack", state, config=CONFIG)
    target = _other_values(state)
    loaded = ck.load_checkpoint(path, target, config=CONFIG)
    assert isinstance(loaded, tr.TrainState)
    assert _leaves_equal(loaded, state)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(state)
    header = ck.read_checkpoint_header(path)
    assert header["step"] == 1 and header["config"]["lr"] == CONFIG["lr"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left no debris


def test_other_configuration_is_refused(tmp_path, state):
    path = ck.save_checkpoint(tmp_path / "c.msgpack", state, config=CONFIG)
    target = _other_values(state)
    before = jax.tree_util.tree_map(np.array, target)
    other = {**CONFIG, "lr": 0.5, "weighting": "snr"}
    with pytest.raises(
        ValueError,
        match=r"another configuration: lr = 0.003 in the checkpoint, 0.5 requested; "
        r"weighting = 'uniform' in the checkpoint, 'snr' requested",
    ):
        ck.load_checkpoint(path, target, config=other)
    assert _leaves_equal(target, before)  # nothing loaded into the caller's state


@pytest.mark.parametrize("cut", ["magic", "header", "payload", "last_byte"])
def test_truncated_checkpoint_is_refused(tmp_path, cut, state):
    path = ck.save_checkpoint(tmp_path / "c.msgpack", state, config=CONFIG)
    blob = path.read_bytes()
    header_end = blob.index(b"\n", len(b"PIFS-JAX-CHECKPOINT 1\n")) + 1
    keep = {"magic": 10, "header": header_end - 5, "payload": len(blob) // 2, "last_byte": len(blob) - 1}[cut]
    path.write_bytes(blob[:keep])
    with pytest.raises(ValueError, match="is truncated"):
        ck.load_checkpoint(path, _other_values(state), config=CONFIG)


def test_corrupted_checkpoint_is_refused(tmp_path, state):
    path = ck.save_checkpoint(tmp_path / "c.msgpack", state, config=CONFIG)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x01  # one flipped bit inside the payload
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="is corrupted: sha256"):
        ck.load_checkpoint(path, _other_values(state), config=CONFIG)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is not a pifs_jax checkpoint"):
        ck.load_checkpoint(path, _other_values(state), config=CONFIG)
    with pytest.raises(ValueError, match="no such file"):
        ck.load_checkpoint(tmp_path / "missing", _other_values(state), config=CONFIG)


def test_other_state_structure_is_refused(tmp_path, state):
    path = ck.save_checkpoint(tmp_path / "c.msgpack", state, config=CONFIG)
    params = dict(state.params)
    name = sorted(params)[0]
    wider = jax.tree_util.tree_map(lambda a: jnp.zeros((*a.shape[:-1], a.shape[-1] + 1), a.dtype), params[name])
    with pytest.raises(ValueError, match=r"leaf .* has shape .* expected"):
        ck.load_checkpoint(path, state._replace(params={**params, name: wider}), config=CONFIG)
    with pytest.raises(ValueError, match=r"does not match the expected state structure|another structure"):
        ck.load_checkpoint(path, state._replace(params={**params, "extra": jnp.zeros(3)}), config=CONFIG)


def test_keyboard_interrupt_saves_the_last_step_and_resume_is_exact(tmp_path, x32, reference_run):
    """Ctrl-C at step 43 (checkpoints every 20) leaves a checkpoint of step 43; resuming it gives the
    uninterrupted run's state bit for bit and the same metrics log."""
    model, dataset = _model_and_data()
    kwargs = dict(progress=False, evaluate=False, model=model, dataset=dataset)

    def interrupt(step, metrics):
        if step == 43:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(RUN, tmp_path / "killed", callback=interrupt, **kwargs)
    assert ck.read_checkpoint_header(tmp_path / "killed" / ck.CHECKPOINT_NAME)["step"] == 43
    resumed = tr.train(RUN, tmp_path / "killed", resume=True, **kwargs)
    assert int(resumed.state.step) == 60 and _leaves_equal(resumed.state, reference_run.state)
    log1, log2 = (tr.read_metrics_log(path / "metrics.jsonl") for path in (tmp_path / "killed", reference_run.out))
    assert [r["step"] for r in log1] == list(range(5, 61, 5))
    assert _strip_timings(log1) == _strip_timings(log2)


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_training import TinyEps, tiny_config, tiny_data, tiny_init
    from pifs_jax.models import training as tr

    out, resume, sleep = sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3])
    data = tiny_data(80)
    module = TinyEps(features=8, T=100)
    cfg = tiny_config(steps=60, checkpoint_every=20, log_every=5)  # RUN
    tr.train(cfg, out, resume=resume, progress=False, evaluate=False, model=(module, tiny_init(module, (8, 8, 1))),
             dataset=(data[:64], data[64:]), callback=lambda k, m: time.sleep(sleep))
    print("finished", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, request):
    """A run SIGKILLed after its first checkpoint and resumed (two processes) ends bit-identical to the
    uninterrupted run. On a CPU backend that reference is :func:`reference_run` (made in this process,
    shared with the Ctrl-C test; the scripts run on the CPU too); on another backend it is a third
    process of the script, on the CPU like the others."""
    script = tmp_path / "run_training.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    # 1. a run that sleeps between steps, SIGKILLed as soon as its first checkpoint exists
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "fresh", "0.05"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    ckpt = killed / ck.CHECKPOINT_NAME
    try:
        while not ckpt.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = ck.read_checkpoint_header(ckpt)["step"]
    assert 20 <= step_at_kill < 60, step_at_kill

    # 2. resume it, and 3. the same configuration run without interruption (concurrently, if a process)
    resumed = subprocess.Popen(
        [sys.executable, str(script), str(killed), "resume", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    processes = [resumed]
    if jax.default_backend() == "cpu":
        reference = request.getfixturevalue("reference_run").out
    else:
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(reference), "fresh", "0"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for p in processes:
        output = p.communicate(timeout=180)[0].decode()
        assert p.returncode == 0 and "finished" in output, output

    def final(path):
        header = ck.read_checkpoint_header(path / ck.CHECKPOINT_NAME)
        payload = (path / ck.CHECKPOINT_NAME).read_bytes().split(b"\n", 3)[3]
        return header, flax.serialization.msgpack_restore(payload)

    (h1, s1), (h2, s2) = final(killed), final(reference)
    assert h1["step"] == h2["step"] == 60
    assert _leaves_equal(s1, s2)  # params, EMA, optimiser state, key: bit-identical
    # the metrics log of the resumed run has no gaps or duplicates and equals the reference's
    log1, log2 = (tr.read_metrics_log(p / "metrics.jsonl") for p in (killed, reference))
    assert [r["step"] for r in log1] == list(range(5, 61, 5))
    assert _strip_timings(log1) == _strip_timings(log2)
