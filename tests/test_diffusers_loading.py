"""Reading diffusers ``UNet2DModel`` folders: layouts weight by weight, key names, files, and bad input.

Every bad input raises ``ArgumentError`` naming the file and the key, and nothing is returned
half-loaded. Unsupported architectures are refused before any weight is read (checked with a
weight file that would itself be refused: the error is the config's).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pifs_jax.errors import ArgumentError
from pifs_jax.models import load_diffusers_unet, seeded_diffusers_weights, write_random_diffusers_unet
from pifs_jax.models.diffusers_unet import (
    diffusers_to_flax,
    diffusers_weight_shapes,
    flax_to_diffusers,
    read_unet_config,
)
from pifs_jax.models.diffusers_unet.convert import LEGACY_ATTENTION_NAMES, rename_legacy_keys

TINY = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}
FIXTURES = Path(__file__).parent / "fixtures"


def tiny_folder(tmp_path: Path, **changes) -> Path:
    return write_random_diffusers_unet(tmp_path / "pipe", {**TINY, **changes}, seed=5)


def save_safetensors(state: dict, path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))


# ----------------------------------------------------------------------------- layouts


def test_every_weight_is_converted_by_its_layout_rule():
    """Weight by weight: conv OIHW -> HWIO, linear (O, I) -> (I, O), GroupNorm weight -> scale, bias kept."""
    config = read_unet_config(TINY)
    state = seeded_diffusers_weights(config, seed=1)
    params = diffusers_to_flax(state, config)
    kinds = {"conv": 0, "linear": 0, "norm": 0, "bias": 0}
    for key, value in state.items():
        parts = key.split(".")
        node, names = params, []
        i = 0
        while i < len(parts) - 1:  # "a.b.3.c" -> a / b_3 / c
            if i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
                names.append(f"{parts[i]}_{parts[i + 1]}")
                i += 2
            else:
                names.append(parts[i])
                i += 1
        for name in names:
            node = node[name]
        if parts[-1] == "bias":
            np.testing.assert_array_equal(node["bias"], value, err_msg=key)
            kinds["bias"] += 1
        elif value.ndim == 4:
            o, c_in, kh, kw = value.shape
            kernel = node["kernel"]
            assert kernel.shape == (kh, kw, c_in, o), key
            for a, b, c, d in [(0, 0, 0, 0), (o - 1, c_in - 1, kh - 1, kw - 1), (o // 2, c_in // 3, kh // 2, 0)]:
                assert kernel[c, d, b, a] == value[a, b, c, d], key
            kinds["conv"] += 1
        elif value.ndim == 2:
            np.testing.assert_array_equal(node["kernel"], value.T, err_msg=key)
            kinds["linear"] += 1
        else:
            np.testing.assert_array_equal(node["scale"], value, err_msg=key)
            kinds["norm"] += 1
    assert all(kinds.values()), kinds
    # the inverse gives every array back
    back = flax_to_diffusers(params)
    assert sorted(back) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def test_conv_layout_computes_torchs_convolution():
    """A converted 3x3 kernel applied by flax equals torch's cross-correlation written out in NumPy."""
    import flax.linen as nn
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)  # torch (O, I, kh, kw)
    x = rng.standard_normal((1, 6, 7, 3))  # NHWC
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((6, 7, 5))
    for i in range(6):
        for j in range(7):
            expected[i, j] = np.einsum("oikl,kli->o", weight, padded[i : i + 3, j : j + 3]) + bias
    conv = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)))
    got = conv.apply(
        {
            "params": {
                "kernel": jnp.asarray(weight.transpose(2, 3, 1, 0), jnp.float32),
                "bias": jnp.asarray(bias, jnp.float32),
            }
        },
        jnp.asarray(x, jnp.float32),
    )
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)


def test_weight_shapes_match_diffusers_parameter_count():
    """The google/ddpm-cifar10-32 architecture: 35,746,307 parameters, as diffusers counted them."""
    meta = json.loads((FIXTURES / "diffusers_cifar10.json").read_text())
    shapes = diffusers_weight_shapes(read_unet_config(meta["config"]))
    assert sum(int(np.prod(s)) for s in shapes.values()) == meta["parameters"] == 35_746_307
    assert shapes["down_blocks.1.attentions.0.to_q.weight"] == (256, 256)
    assert shapes["up_blocks.0.resnets.0.conv1.weight"] == (256, 512, 3, 3)
    assert shapes["down_blocks.0.downsamplers.0.conv.weight"] == (128, 128, 3, 3)


def test_legacy_attention_names_load_the_same_network(tmp_path):
    """``query``/``key``/``value``/``proj_attn`` files load into the same parameters as ``to_q``/... files."""
    folder = tiny_folder(tmp_path)
    new = load_diffusers_unet(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = seeded_diffusers_weights(read_unet_config(TINY), seed=5)
    legacy = {}
    for key, value in state.items():
        for new_name, old_name in ((v, k) for k, v in LEGACY_ATTENTION_NAMES.items()):
            marker = f".{new_name}."
            if ".attentions." in key and marker in key:
                key = key.replace(marker, f".{old_name}.")
                break
        legacy[key] = value
    assert any(".query.weight" in k for k in legacy) and any(".proj_attn.bias" in k for k in legacy)
    save_safetensors(legacy, weights)
    old = load_diffusers_unet(folder)
    for a, b in zip(jax_leaves(new.params), jax_leaves(old.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # a key named "key" outside an attention layer is not renamed
    assert rename_legacy_keys(["mid_block.resnets.0.key.weight"]) == {
        "mid_block.resnets.0.key.weight": "mid_block.resnets.0.key.weight"
    }


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_bare_model_folder_without_scheduler(tmp_path):
    folder = tiny_folder(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(folder / "unet", bare)
    loaded = load_diffusers_unet(bare)
    assert loaded.schedule is None and loaded.scheduler_config is None
    assert loaded.image_shape == (8, 8, 3)
    with pytest.raises(ArgumentError, match="no scheduler config"):
        loaded.sampling_grid(10)
    # a scheduler_config.json beside config.json is read
    shutil.copy(folder / "scheduler" / "scheduler_config.json", bare / "scheduler_config.json")
    assert load_diffusers_unet(bare).schedule.T == 1000


def test_pickle_weights_read_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tiny_folder(tmp_path)
    reference = load_diffusers_unet(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = seeded_diffusers_weights(read_unet_config(TINY), seed=5)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    loaded = load_diffusers_unet(folder)
    assert loaded.weights_file.name == "diffusion_pytorch_model.bin"
    for a, b in zip(jax_leaves(reference.params), jax_leaves(loaded.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pickle_weights_refused_without_torch(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(
        ArgumentError,
        match=r"diffusion_pytorch_model\.bin.*PyTorch pickle.*torch is not installed.*"
        r"diffusion_pytorch_model\.safetensors",
    ) as info:
        load_diffusers_unet(folder)
    assert info.value.argument == "path"


def test_float16_weights_are_read_as_float32(tmp_path):
    folder = tiny_folder(tmp_path)
    state = seeded_diffusers_weights(read_unet_config(TINY), seed=5)
    save_safetensors(
        {k: v.astype(np.float16) for k, v in state.items()}, folder / "unet" / "diffusion_pytorch_model.safetensors"
    )
    loaded = load_diffusers_unet(folder)
    leaf = loaded.params["conv_in"]["kernel"]
    assert leaf.dtype == np.float32
    np.testing.assert_array_equal(
        leaf, state["conv_in.weight"].astype(np.float16).astype(np.float32).transpose(2, 3, 1, 0)
    )


# ----------------------------------------------------------------------------- bad input


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgumentError, match=r"'.*empty' is neither a diffusers pipeline folder .* nor a model folder"):
        load_diffusers_unet(tmp_path / "empty")
    with pytest.raises(ArgumentError, match="not found"):
        load_diffusers_unet(tmp_path / "missing")
    folder = tiny_folder(tmp_path)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(ArgumentError, match=r"unet/config\.json' not found"):
        load_diffusers_unet(folder)


@pytest.mark.parametrize("class_name", ["UNet2DConditionModel", "AutoencoderKL"])
def test_config_of_another_class(tmp_path, class_name):
    folder = tiny_folder(tmp_path)
    config_file = folder / "unet" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_class_name": class_name}))
    with pytest.raises(ArgumentError, match=rf"is a '{class_name}' \(in '.*unet/config\.json'\)") as info:
        load_diffusers_unet(folder / "unet")
    assert info.value.argument == "_class_name"
    # a pipeline whose index names another unet class is refused from the index
    index = folder / "model_index.json"
    index.write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", class_name]}))
    with pytest.raises(ArgumentError, match=rf"'{class_name}'.*model_index\.json"):
        load_diffusers_unet(folder)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (
            {"down_block_types": ["SkipDownBlock2D", "AttnDownBlock2D"]},
            "down_block_types",
            "'SkipDownBlock2D' is not supported",
        ),
        ({"up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"]}, "up_block_types", "'ResnetUpsampleBlock2D'"),
        ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type", "'UNetMidBlock2DCrossAttn' is not supported"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type", "'fourier' is not supported"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift", "'scale_shift' is not supported"),
        ({"class_embed_type": "timestep"}, "class_embed_type", "'timestep' is not supported"),
        ({"num_class_embeds": 10}, "num_class_embeds", "10 is not supported"),
        ({"act_fn": "gelu"}, "act_fn", "'gelu' is not supported"),
        ({"downsample_type": "resnet"}, "downsample_type", "'resnet' is not supported"),
        ({"out_channels": 6}, "out_channels", "learned-variance"),
        ({"downsample_padding": 2}, "downsample_padding", "expected 0 or 1"),
        ({"sample_size": 9}, "sample_size", "multiple of 2"),
        ({"norm_num_groups": 3}, "norm_num_groups", "must divide"),
        ({"attention_head_dim": 32}, "attention_head_dim", "wider than"),
        ({"cross_attention_dim": 768}, "cross_attention_dim", "unknown UNet2DModel config key"),
    ],
)
def test_unsupported_option_refused_before_any_weight_is_read(tmp_path, change, key, message):
    folder = tiny_folder(tmp_path)
    config_file = folder / "unet" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a weight file")
    with pytest.raises(ArgumentError, match=message) as info:
        load_diffusers_unet(folder)
    assert info.value.argument == key
    assert "unet/config.json" in str(info.value)


def test_ignore_accepts_a_key_knowingly(tmp_path):
    folder = tiny_folder(tmp_path)
    config_file = folder / "unet" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "my_note": "x"}))
    with pytest.raises(ArgumentError, match="my_note"):
        load_diffusers_unet(folder)
    assert load_diffusers_unet(folder, ignore=("my_note",)).image_shape == (8, 8, 3)


def test_non_epsilon_scheduler_refused(tmp_path):
    folder = tiny_folder(tmp_path)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(ArgumentError, match=r"'v_prediction' in '.*scheduler_config\.json'") as info:
        load_diffusers_unet(folder)
    assert info.value.argument == "prediction_type"


def weights_file(folder: Path) -> Path:
    return folder / "unet" / "diffusion_pytorch_model.safetensors"


def test_missing_extra_and_misshaped_weights_are_named(tmp_path):
    folder = tiny_folder(tmp_path)
    state = seeded_diffusers_weights(read_unet_config(TINY), seed=5)
    missing = {k: v for k, v in state.items() if k != "mid_block.attentions.0.to_k.bias"}
    save_safetensors(missing, weights_file(folder))
    with pytest.raises(
        ArgumentError,
        match=r"diffusion_pytorch_model\.safetensors' does not match its config: "
        r"missing 1 key\(s\) the config implies: 'mid_block\.attentions\.0\.to_k\.bias'",
    ) as info:
        load_diffusers_unet(folder)
    assert info.value.argument == "path"
    save_safetensors({**state, "mid_block.extra.weight": np.zeros(3, np.float32)}, weights_file(folder))
    with pytest.raises(ArgumentError, match=r"1 key\(s\) the config does not imply: 'mid_block\.extra\.weight'"):
        load_diffusers_unet(folder)
    wrong = dict(state)
    wrong["conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    save_safetensors(wrong, weights_file(folder))
    with pytest.raises(
        ArgumentError,
        match=r"wrong shape for 'conv_in\.weight' \(stored \(8, 3, 5, 5\), the config "
        r"implies \(8, 3, 3, 3\)\)",
    ):
        load_diffusers_unet(folder)
    save_safetensors({**state, "conv_in.bias": np.arange(8, dtype=np.int32)}, weights_file(folder))
    with pytest.raises(ArgumentError, match=r"'conv_in\.bias' have dtype\(s\) \['I32'\]"):
        load_diffusers_unet(folder)


def test_truncated_or_corrupt_weight_file(tmp_path):
    folder = tiny_folder(tmp_path)
    data = weights_file(folder).read_bytes()
    weights_file(folder).write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ArgumentError,
        match=r"cannot read '.*diffusion_pytorch_model\.safetensors' as safetensors "
        r"\(truncated or corrupt\?\)",
    ) as info:
        load_diffusers_unet(folder)
    assert info.value.argument == "path"
    weights_file(folder).write_bytes(b"\x00" * 7)
    with pytest.raises(ArgumentError, match="truncated or corrupt"):
        load_diffusers_unet(folder)


def test_no_weight_file_or_shards(tmp_path):
    folder = tiny_folder(tmp_path)
    weights_file(folder).unlink()
    with pytest.raises(
        ArgumentError, match=r"no weight file in '.*unet': expected diffusion_pytorch_model\.safetensors"
    ):
        load_diffusers_unet(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    with pytest.raises(ArgumentError, match="sharded weights are not read"):
        load_diffusers_unet(folder)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    """One NaN in conv_out.bias, one inf in conv_in.weight, or a float16 file whose 1e6 became inf: refused."""
    from safetensors.numpy import load_file

    folder = tiny_folder(tmp_path)
    state = load_file(str(weights_file(folder)))
    nan_bias = dict(state)
    nan_bias["conv_out.bias"] = state["conv_out.bias"].copy()
    nan_bias["conv_out.bias"][1] = np.nan
    save_safetensors(nan_bias, weights_file(folder))
    with pytest.raises(
        ArgumentError,
        match=r"^path: tensor 'conv_out\.bias' of '.*diffusion_pytorch_model\.safetensors' holds 1 NaN / inf value\(s\)",
    ) as info:
        load_diffusers_unet(folder)
    assert info.value.argument == "path"
    inf_kernel = dict(state)
    inf_kernel["conv_in.weight"] = state["conv_in.weight"].copy()
    inf_kernel["conv_in.weight"][0, 0, 0, 0] = np.inf
    save_safetensors(inf_kernel, weights_file(folder))
    with pytest.raises(ArgumentError, match=r"tensor 'conv_in\.weight' of .* holds 1 NaN / inf value\(s\)"):
        load_diffusers_unet(folder)
    with np.errstate(over="ignore"):
        half = {k: v.astype(np.float16) for k, v in state.items()}
        half["conv_in.bias"] = np.full_like(half["conv_in.bias"], 1e6)  # float16 holds at most 65504: inf
    save_safetensors(half, weights_file(folder))
    with pytest.raises(ArgumentError, match=r"tensor 'conv_in\.bias' of .* holds 8 NaN / inf value\(s\)"):
        load_diffusers_unet(folder)
    # finite stored weights that overflow in the requested dtype: refused naming dtype
    big = dict(state)
    big["conv_in.bias"] = np.full_like(state["conv_in.bias"], 1e6)
    save_safetensors(big, weights_file(folder))
    assert np.isfinite(load_diffusers_unet(folder).params["conv_in"]["bias"]).all()
    with pytest.raises(
        ArgumentError, match=r"^dtype: float16 cannot hold the weights of .*parameter 'conv_in/bias' has 8 value"
    ):
        load_diffusers_unet(folder, dtype=np.float16)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool, np.complex64, None, "no such dtype"])
def test_non_floating_dtype_is_refused(tmp_path, dtype):
    folder = tiny_folder(tmp_path)
    with pytest.raises(ArgumentError, match=r"^dtype: expected a floating dtype \(float16, bfloat16, float32"):
        load_diffusers_unet(folder, dtype=dtype)
    assert load_diffusers_unet(folder, dtype=np.float16).params["conv_in"]["bias"].dtype == np.float16


@pytest.mark.parametrize("path", [None, 3, b"bytes"])
def test_a_path_that_is_not_a_path_is_refused(path):
    with pytest.raises(ArgumentError, match=r"^path: expected a folder path \(str or os\.PathLike\)"):
        load_diffusers_unet(path)


@pytest.mark.parametrize("relative", ["unet/config.json", "model_index.json", "scheduler/scheduler_config.json"])
def test_json_files_that_are_lists_or_nested_too_deeply_are_refused(tmp_path, relative):
    folder = tiny_folder(tmp_path)
    target = folder / relative
    target.write_text("[1, 2]")
    with pytest.raises(ArgumentError, match=rf"^path: '.*{relative}' must hold a JSON object .*got a JSON list"):
        load_diffusers_unet(folder)
    target.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ArgumentError, match=rf"^path: '.*{relative}' is nested too deeply to be a"):
        load_diffusers_unet(folder)
    if relative == "unet/config.json":  # read_unet_config names its own argument
        with pytest.raises(ArgumentError, match=r"^config: '.*config\.json' is nested too deeply to be a model config"):
            read_unet_config(target)
        target.write_text("[1, 2]")
        with pytest.raises(ArgumentError, match=r"^config: '.*config\.json' must hold a JSON object"):
            read_unet_config(target)


def test_google_ddpm_cifar10_configs_as_published_are_read(tmp_path):
    """The configs of the google/ddpm-cifar10-32 pipeline as published (diffusers 0.0.4 / 0.1.1 key sets)."""
    unet = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.0.4",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }
    scheduler = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.1.1",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "trained_betas": None,
        "variance_type": "fixed_large",
    }
    config = read_unet_config(unet)
    assert config.image_shape == (32, 32, 3) and config.heads(256) == (1, 256)
    assert sum(int(np.prod(s)) for s in diffusers_weight_shapes(config).values()) == 35_746_307
    # the pipeline folder's index and scheduler are read as published (weights of a tiny stand-in)
    folder = write_random_diffusers_unet(tmp_path / "pipe", TINY, scheduler_config=scheduler)
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": "0.1.1",
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            }
        )
    )
    loaded = load_diffusers_unet(folder)
    np.testing.assert_array_equal(loaded.sampling_grid(50)[:4], [0, 1, 21, 41])


@pytest.mark.parametrize(
    "relative", ["", "unet", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler"]
)
def test_symlink_loops_are_named_not_reported_missing(tmp_path, relative):
    """A folder or file that is a link to itself was reported as "not found"; now as a symlink loop, by path."""
    folder = tiny_folder(tmp_path)
    target = folder / relative if relative else tmp_path / "loop"
    if target.is_dir():
        shutil.rmtree(target)
    elif relative:
        target.unlink()
    target.symlink_to(target.name)
    with pytest.raises(ArgumentError, match=rf"^path: '.*{relative or 'loop'}[^']*' is a symlink loop"):
        load_diffusers_unet(target if not relative else folder)


def test_a_pipeline_unet_entry_that_is_not_a_pair_is_described_as_found(tmp_path):
    """{"unet": "UNet2DModel"} was refused with "the unet is 'UNet2DModel'; only UNet2DModel is read"."""
    folder = tiny_folder(tmp_path)
    index = folder / "model_index.json"
    index.write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": "UNet2DModel"}))
    with pytest.raises(ArgumentError) as caught:
        load_diffusers_unet(folder)
    assert caught.value.argument == "path"
    assert caught.value.detail == (
        f"the 'unet' entry of {str(index)!r} is 'UNet2DModel' (str); expected a [library, class] pair such as "
        '["diffusers", "UNet2DModel"]'
    )
    index.write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ArgumentError, match=r"^_class_name: the pipeline's unet is a 'UNet2DConditionModel' in"):
        load_diffusers_unet(folder)
