"""Data-parallel training: the batch split over a ``data`` mesh axis gives the single-device trajectory.

The multi-device runs need host devices that exist before JAX initialises, so they run in fresh
processes: four forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``), and
two processes of one CPU device each joined by ``jax.distributed`` over localhost (gloo
collectives). The single-device reference runs in this process.

Tolerance of the comparisons with the single-device run: ``rtol = 1e-5`` on float32 losses. The
draws (batch indices, ``t``, ``eps``) are identical on any number of devices, so the only
difference is the order of the sums in the batch mean and in the gradient's all-reduce. Each
reordered float32 sum of ``m`` terms differs by at most about ``m * 2**-24`` relatively (``m``
= 8 images, or 4 device partial sums); six AdamW steps of lr 3e-3 turn gradient differences of
that size into parameter differences of order ``1e-6`` and loss differences of order ``1e-6``
relatively. Measured: at most 1 ulp (``6.6e-8`` relatively) on these runs; ``1e-5`` (about 100
ulp) leaves room for other CPUs and XLA versions while a real error (a wrong batch split, a
missing all-reduce: each device then steps on its own quarter of the batch) changes the loss
after the first update by far more (its first step's loss differs already at the 1e-2 level).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from pifs_jax import cli
from pifs_jax.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from pifs_jax.errors import ArgumentError
from pifs_jax.models import training as tr
from pifs_jax.rendezvous import JOIN_MAGIC, rendezvous
from pifs_jax.sharding import initialize_processes

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # module notes: reduction order only

# Shared by this process and the subprocess scripts: the run every test compares.
RUN = textwrap.dedent(
    """
    def run_config(devices):
        return tr.train_config("quick", model="dit", data="digits", steps=6, batch_size=8, num_train=64,
                               num_test=32, T=100, sample_steps=5, warmup_steps=2, lr=3e-3, checkpoint_every=3,
                               log_every=1, num_samples=0, devices=devices)


    def run(devices, out, stop_at=None, **kwargs):
        losses = {}

        def record(step, metrics):
            losses[step] = metrics["loss"]
            if step == stop_at:
                raise KeyboardInterrupt  # a killed run: the loop checkpoints the completed step first

        try:
            result = tr.train(run_config(devices), out, progress=False, evaluate=False, callback=record, **kwargs)
        except KeyboardInterrupt:
            result = None
        return result, losses
    """
)
_namespace: dict = {"tr": tr}
exec(RUN, _namespace)
run_config, run = _namespace["run_config"], _namespace["run"]


def subprocess_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-device run (6 steps): its result and losses."""
    return run(1, tmp_path_factory.mktemp("one") / "run")


# ----------------------------------------------------------------------------- input checks


def test_batch_size_must_split_over_the_devices():
    with pytest.raises(ArgumentError, match=r"^devices: expected a divisor of batch_size = 6"):
        tr.train_config("quick", batch_size=6, devices=4)
    assert tr.train_config("quick", batch_size=8, devices=4).devices == 4
    assert "devices" in tr.TrainConfig.RUN_CONTROL  # a run may resume on another device count


def test_more_devices_than_jax_sees_says_how_to_get_them(tmp_path, capsys):
    too_many = jax.device_count() + 1
    with pytest.raises(ArgumentError, match=r"^devices:") as error:
        tr.check_devices(too_many)
    assert f"XLA_FLAGS=--xla_force_host_platform_device_count={too_many}" in str(error.value)
    assert "--devices" in str(error.value)
    with pytest.raises(ArgumentError, match=r"^devices:"):
        tr.train(tr.train_config("quick", data="digits", batch_size=8 * too_many, devices=too_many), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert (
        cli.main(
            [
                "train",
                "--data",
                "digits",
                "--batch-size",
                "8",
                "--devices",
                str(too_many),
                "--out",
                str(tmp_path / "cli"),
                "--no-progress",
            ]
        )
        == 2
    )
    message = capsys.readouterr().err
    assert "argument --devices:" in message and "xla_force_host_platform_device_count" in message
    assert (
        cli.main(
            [
                "train",
                "--data",
                "digits",
                "--batch-size",
                "6",
                "--devices",
                "4",
                "--out",
                str(tmp_path / "cli"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "argument --devices:" in capsys.readouterr().err


def test_multi_process_options(tmp_path, capsys):
    assert (
        cli.main(
            ["train", "--coordinator", "localhost:1", "--process-id", "0", "--out", str(tmp_path), "--no-progress"]
        )
        == 2
    )
    assert "argument --num-processes:" in capsys.readouterr().err
    with pytest.raises(ArgumentError, match=r"^coordinator:"):
        initialize_processes("localhost", 2, 0)
    with pytest.raises(ArgumentError, match=r"^process_id:"):
        initialize_processes("localhost:12355", 2, 2)
    with pytest.raises(ArgumentError, match=r"^num_processes:"):
        initialize_processes("localhost:12355", 0, 0)


def test_only_process_zero_reports_writing_the_run(tmp_path):
    """Process 1 of a two-process run once printed "trained ... -> OUT" though only process 0 writes OUT."""
    from pifs_jax.cli.train import result_lines

    config = tr.train_config("quick", data="digits", steps=3)
    result = tr.TrainResult(tr.TrainState(step=np.int32(3), params=None, ema_params=None, opt_state=None, key=None),
                            config, tmp_path / "mp", 1.25, None)  # fmt: skip
    first = result_lines(config, result, recipe=None, process_index=0)
    assert first == [f"trained {config.model} ({config.size}) on digits for 3 steps in 1.2 s -> {tmp_path / 'mp'}"]
    other = result_lines(config, result, recipe=None, process_index=1)
    assert len(other) == 1 and "->" not in other[0]
    assert other[0].startswith("process 1: trained ") and other[0].endswith(
        f"process 0 writes the run to {tmp_path / 'mp'}"
    )


# ----------------------------------------------------------------------------- four devices, one process

FOUR_DEVICES = (
    """
import json, shutil, sys
from pathlib import Path
import jax
import numpy as np
import pifs_jax as pj
from pifs_jax.checkpoint import read_checkpoint_header
from pifs_jax.models import training as tr
"""
    + RUN
    + """
assert jax.device_count() == 4, jax.devices()
out = Path(sys.argv[1])
# the runs below compile the same step program: XLA's persistent cache compiles it once
jax.config.update("jax_compilation_cache_dir", str(out / "xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
full, losses = run(4, out / "four")
params = jax.tree_util.tree_leaves(full.state.params)
assert all(p.sharding.is_fully_replicated and len(p.sharding.device_set) == 4 for p in params)

# the compiled step splits the batch: each device applies the model to 8 / 4 = 2 images,
# and the gradient is summed across devices
config = run_config(4)
module, init_fn = tr.model_for_config(config, (8, 8, 1))
optimizer, state = tr.initial_train_state(config, init_fn)
mesh = tr.data_mesh(4)
tables = tr.loss_tables(pj.named_schedule(config.schedule, config.T), weighting=config.weighting,
                        grid=pj.uniform_grid(config.T, config.sample_steps))
step = tr.make_train_step(tr.module_apply_fn(module), optimizer, tables, batch_size=config.batch_size,
                          ema_decay=config.ema_decay, patch_size=config.patch_size, mesh=mesh)
state, data = tr.replicate((state, np.zeros((64, 8, 8, 1), np.float32)), mesh)
hlo = step.lower(state, data).compile().as_text()
split = "f32[2,8,8,1]" in hlo and "f32[8,8,8,1]" not in hlo  # no full batch on any device
all_reduce = "all-reduce(" in hlo

# killed after step 4 (the loop saves step 4), copied, then resumed on the same 4 devices
_, killed_losses = run(4, out / "killed", stop_at=4)
header = read_checkpoint_header(out / "killed" / "checkpoint.msgpack")
shutil.copytree(out / "killed", out / "killed_copy")
resumed, resumed_losses = run(4, out / "killed", resume=True)
same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed.state)),
                                              jax.tree_util.tree_leaves(jax.device_get(full.state))))
print("RESULT " + json.dumps({"losses": losses, "killed": killed_losses, "resumed": resumed_losses,
                             "resumed_equals_uninterrupted": same, "checkpoint_step": header["step"],
                             "batch_split": split, "all_reduce": all_reduce}))
"""
)


@pytest.mark.slow
def test_four_devices_follow_the_single_device_trajectory(tmp_path, reference):
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(tmp_path)],
        cwd=REPO,
        env=subprocess_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    got = json.loads(line[len("RESULT ") :])
    assert got["batch_split"] and got["all_reduce"]

    one_result, one_losses = reference
    steps = sorted(one_losses)
    assert steps == list(range(1, 7))
    np.testing.assert_allclose([got["losses"][str(k)] for k in steps], [one_losses[k] for k in steps], rtol=RTOL)

    # resumed on the same 4 devices: bit for bit the uninterrupted 4-device run
    assert got["checkpoint_step"] == 4 and got["resumed_equals_uninterrupted"]
    assert [got["resumed"][str(k)] for k in (5, 6)] == [got["losses"][str(k)] for k in (5, 6)]

    # the same checkpoint format: the 4-device checkpoint resumes on this process's single device
    copy = tmp_path / "killed_copy"
    assert read_checkpoint_header(copy / CHECKPOINT_NAME)["config"] == run_config(1).identity()
    resumed, losses = run(1, copy, resume=True)
    assert sorted(losses) == [5, 6]
    np.testing.assert_allclose([losses[5], losses[6]], [one_losses[5], one_losses[6]], rtol=RTOL)
    for a, b in zip(leaves(resumed.state.params), leaves(one_result.state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-5)  # atol: parameters near 0 (lr 3e-3 steps)


# ----------------------------------------------------------------------------- two processes

TWO_PROCESSES = (
    """
import json, sys
from pathlib import Path
from pifs_jax.sharding import initialize_processes

port, process, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
initialize_processes(f"localhost:{port}", 2, process)
import jax
from pifs_jax.models import training as tr
"""
    + RUN
    + """
assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1, jax.devices()
result, losses = run(2, out / f"process{process}")
print("RESULT " + json.dumps({"process": process, "losses": losses, "step": int(result.state.step)}), flush=True)
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_and_only_process_zero_writes(tmp_path, reference):
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(port), str(i), str(tmp_path)],
            cwd=REPO,
            env=subprocess_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = []
    try:
        for p in processes:
            stdout, stderr = p.communicate(timeout=400)
            assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
            outputs.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:]))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    first, second = (out["losses"] for out in outputs)
    assert first == second  # the same all-reduced numbers in both processes
    assert outputs[0]["step"] == outputs[1]["step"] == 6
    _, one_losses = reference
    np.testing.assert_allclose([first[str(k)] for k in range(1, 7)], [one_losses[k] for k in range(1, 7)], rtol=RTOL)
    assert (tmp_path / "process0" / CHECKPOINT_NAME).exists() and (tmp_path / "process0" / "metrics.jsonl").exists()
    assert read_checkpoint_header(tmp_path / "process0" / CHECKPOINT_NAME)["step"] == 6
    assert not (tmp_path / "process1").exists()  # process 1 writes nothing


# ----------------------------------------------------------------------------- processes that do not join


@pytest.mark.slow
def test_a_missing_process_is_named_in_bounded_time(tmp_path):
    """Process 0 of a two-process run started alone once waited 307 s in silence and aborted with a
    C++ stack trace. Now it stops after --init-timeout seconds with one line naming process 1."""
    port = free_port()
    argv = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "0", "--init-timeout", "2"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pifs_jax.cli", "train", *argv, "--out", str(tmp_path / "mp"), "--no-progress"],
        cwd=REPO,
        env=subprocess_env(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60  # the import, and 2 s of waiting
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pifs-jax train: error: argument --num-processes: waited 2 s at localhost:{port} for ")
    assert "for process 1 of the 2; joined: 0 (this one)" in line
    assert "Check failure" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mp").exists()


def test_process_group_refusals(tmp_path, capsys):
    """A process with no process 0 to join, a duplicate process id, a mismatched process count: each
    waiting process gets a ProcessGroupError naming the argument, within its timeout (the pre-flight
    runs before JAX is touched, so these run in this process, in threads)."""
    import threading

    from pifs_jax.errors import ProcessGroupError
    from pifs_jax.rendezvous import rendezvous

    port = free_port()
    started = time.monotonic()
    with pytest.raises(ProcessGroupError, match=rf"^coordinator: no process 0 answered at localhost:{port} within 1 s"):
        initialize_processes(f"localhost:{port}", 2, 1, init_timeout=1)
    assert time.monotonic() - started < 10
    with pytest.raises(ArgumentError, match=r"^init_timeout: expected a positive number"):
        initialize_processes(f"localhost:{port}", 2, 1, init_timeout=0)

    errors: dict[str, ProcessGroupError] = {}

    def process(name: str, process_id: int, num_processes: int) -> None:
        try:
            rendezvous("localhost", port, num_processes, process_id, timeout=2)
        except ProcessGroupError as exc:
            errors[name] = exc

    threads = [threading.Thread(target=process, args=("zero", 0, 3))]
    threads[0].start()
    time.sleep(0.3)  # process 0 listens
    for name, process_id, num_processes in (("one", 1, 3), ("one again", 1, 3), ("two of four", 2, 4)):
        threads.append(threading.Thread(target=process, args=(name, process_id, num_processes)))
        threads[-1].start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=30)
    assert errors["one again"].argument == "process_id"
    assert "process 1 has already joined the run" in errors["one again"].detail
    assert errors["two of four"].argument == "num_processes"
    assert "runs 3 processes, this one was started with num_processes = 4" in errors["two of four"].detail
    assert errors["zero"].argument == "num_processes"
    assert errors["zero"].detail.startswith(f"waited 2 s at localhost:{port} for process 2 of the 3")
    assert "refused: a second process 1" in errors["zero"].detail
    assert errors["one"].detail.startswith("process 0 gave up: waited 2 s")  # told by process 0

    # the command line: --init-timeout only with --coordinator
    assert cli.main(["train", "--init-timeout", "5", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "argument --init-timeout: only for a multi-process run" in capsys.readouterr().err


def test_a_joining_process_reads_wait_and_go_arriving_together():
    """Process 0's two words to a joined process, WAIT and GO, may reach it in one TCP segment (it
    joined last, so GO follows at once): each must be read as its own line. Before, the reader took
    both as one reply, refused 'WAIT\\nGO' as "something else answers", and process 0 then hung in
    JAX's connection until its timeout (a two-process run failing on a busy machine)."""
    server = socket.create_server(("localhost", 0))
    port = server.getsockname()[1]
    heard = []

    def process_zero():
        conn, _ = server.accept()
        with conn:
            heard.append(conn.makefile("rb").readline().decode())
            conn.sendall(b"WAIT\nGO\n")  # one segment
            conn.recv(1)  # until the joined process closes

    thread = threading.Thread(target=process_zero)
    thread.start()
    try:
        rendezvous("localhost", port, 2, 1, timeout=10)  # returns: it heard GO
    finally:
        thread.join(timeout=10)
        server.close()
    assert heard == [f"{JOIN_MAGIC} 2 1\n"]
