"""Architectures as specs: round trips, validation by field name, the registry, and a user spec
trained, reloaded by ``load_run`` and analysed by ``pifs-jax analyze --run``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax.models as models
from pifs_jax import cli
from pifs_jax.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pifs_jax.errors import ArgumentError
from pifs_jax.models import (
    DiffusersUNetSpec,
    DiTSpec,
    EpsModule,
    ModelSpec,
    UNetSpec,
    count_params,
    init_params,
    register_spec,
    registered_specs,
    spec_from_dict,
)
from pifs_jax.models import training as tr
from pifs_jax.models.diffusers_unet import read_unet_config
from pifs_jax.models.specs import check_field_int

FIXTURES = Path(__file__).parent / "fixtures"


class TinyConvEps(nn.Module):
    """A user architecture: two 3x3 convolutions with the time added in between; no attention."""

    image_shape: tuple
    features: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, return_attention: bool = False) -> Any:
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],)).astype(x.dtype)
        h = nn.Conv(self.features, (3, 3), name="conv_in")(x)
        h = nn.silu(h + nn.Dense(self.features, name="time")(t[:, None] / 1000.0)[:, None, None, :])
        eps = nn.Conv(x.shape[-1], (3, 3), name="conv_out")(h)
        return (eps, {}) if return_attention else eps


@register_spec
@dataclasses.dataclass(frozen=True)
class TinyConvSpec(ModelSpec):
    """The spec of :class:`TinyConvEps`, registered as ``"tiny_conv"``."""

    NAME: ClassVar[str] = "tiny_conv"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {"quick": {"features": 4}}

    features: int = 4

    def validate(self, image_shape: Sequence[int] | None = None) -> None:
        check_field_int(self.features, "features")
        super().validate(image_shape)

    def build(self, image_shape: Sequence[int]) -> TinyConvEps:
        self.validate(image_shape)
        return TinyConvEps(image_shape=tuple(int(s) for s in image_shape), features=self.features)


def _every_spec() -> list[ModelSpec]:
    diffusers = DiffusersUNetSpec.from_config(
        read_unet_config(json.loads((FIXTURES / "diffusers_small_a.json").read_text())["config"])
    )
    presets = [cls.preset(size) for cls in (UNetSpec, DiTSpec) for size in ("quick", "full")]
    return [
        *presets,
        UNetSpec(channels=8, channel_mults=(1, 2, 2), attention_resolutions=(4,)),
        DiTSpec(patch_size=8, hidden=192, input_skip=True),
        diffusers,
        TinyConvSpec(3),
    ]


@pytest.mark.parametrize("spec", _every_spec(), ids=lambda s: s.NAME)
def test_every_spec_round_trips_through_json(spec):
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["name"] == spec.NAME and d["name"] in registered_specs()
    again = spec_from_dict(d)
    assert again == spec and type(again) is type(spec) and hash(again) == hash(spec)


def test_the_builtin_specs_build_the_documented_networks():
    """The presets keep the module docstring's numbers (parameters counted on shapes only)."""
    counts = {}
    for cls, name in ((UNetSpec, "unet"), (DiTSpec, "dit")):
        module = cls.preset("quick").build((16, 16, 3))
        assert isinstance(module, EpsModule)
        counts[name] = count_params(jax.eval_shape(lambda k, m=module: init_params(m, k), jax.random.key(0)))
    assert counts == {"unet": 165_587, "dit": 264_259}
    doc = models.__doc__ or ""
    assert f"{counts['unet']:,}" in doc and f"{counts['dit']:,}" in doc
    module, config = models.make_model("dit", image_shape=(8, 8, 1), patch_size=2, hidden=16)
    assert module == dataclasses.replace(DiTSpec.preset("quick", patch_size=2), hidden=16).build((8, 8, 1))
    assert config["name"] == "dit" and config["hidden"] == 16


@pytest.mark.parametrize(
    ("spec", "shape", "field"),
    [
        (UNetSpec(channels=0), None, "channels"),
        (UNetSpec(channels=12, groups=8), None, "groups"),
        (UNetSpec(channel_mults=()), None, "channel_mults"),
        (UNetSpec(attention_resolutions=(0,)), None, "attention_resolutions"),
        (UNetSpec(num_heads=3), None, "num_heads"),
        (UNetSpec(channel_mults=(1, 2, 2)), (14, 14, 3), "image_shape"),
        (DiTSpec(hidden=30), None, "num_heads"),
        (DiTSpec(depth=True), None, "depth"),
        (DiTSpec(pos_embedding="rope"), None, "pos_embedding"),
        (DiTSpec(decoder_features=-1), None, "decoder_features"),
        (DiTSpec(input_skip=1), None, "input_skip"),  # type: ignore[arg-type]
        (DiTSpec(patch_size=3), (16, 16, 3), "patch_size"),
        (DiTSpec(), (16, 16), "image_shape"),
        (TinyConvSpec(features=0), None, "features"),
    ],
)
def test_validate_names_the_bad_field(spec, shape, field):
    with pytest.raises(ArgumentError, match=rf"^{field}: ") as err:
        spec.validate(shape)
    assert err.value.argument == field


def test_an_optional_field_at_its_default_keeps_older_specs_identity():
    """input_skip was added to DiTSpec later: a spec without it reads as the default (the earlier
    network), and the default is left out of fields(), so configs, checkpoints and model cards
    written before it keep their JSON and their recipe fingerprint; off its default it is written."""
    assert DiTSpec.OPTIONAL_FIELDS == {"input_skip": False}
    plain, skip = DiTSpec(), DiTSpec(input_skip=True)
    assert "input_skip" not in plain.fields() and skip.fields()["input_skip"] is True
    older = {k: v for k, v in plain.to_dict().items()}
    assert spec_from_dict(older) == plain
    with pytest.raises(ArgumentError, match=r"^spec: .*missing \['hidden'\]"):
        spec_from_dict({k: v for k, v in older.items() if k != "hidden"})  # a required field is still required
    module, config = models.make_model("dit", image_shape=(8, 8, 1), patch_size=2, hidden=16, input_skip=True)
    assert config["input_skip"] is True and module.input_skip is True


def test_bad_dicts_and_registrations_are_refused():
    diffusers = DiffusersUNetSpec.from_config(
        read_unet_config(json.loads((FIXTURES / "diffusers_small_a.json").read_text())["config"])
    ).to_dict()
    with pytest.raises(ArgumentError, match=r"^norm_num_groups:"):
        spec_from_dict({**diffusers, "norm_num_groups": 7})
    with pytest.raises(ArgumentError, match=r"^spec: .*missing \['depth'\], unknown \['width'\]"):
        spec_from_dict({**{k: v for k, v in DiTSpec().to_dict().items() if k != "depth"}, "width": 3})
    with pytest.raises(ArgumentError, match=r"^model: unknown architecture 'vit'; registered: .*dit.*unet.*tiny_conv"):
        spec_from_dict({"name": "vit"})
    with pytest.raises(ArgumentError, match=r"^size:"):
        DiTSpec.preset("huge")

    @dataclasses.dataclass(frozen=True)
    class Impostor(ModelSpec):
        NAME: ClassVar[str] = "dit"

    with pytest.raises(ArgumentError, match=r"^spec: the name 'dit' is already registered"):
        register_spec(Impostor)
    with pytest.raises(ArgumentError, match=r"^spec: expected a frozen dataclass deriving from ModelSpec"):
        register_spec(int)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"^spec: Nameless needs a class attribute NAME"):
        register_spec(dataclasses.dataclass(frozen=True)(type("Nameless", (ModelSpec,), {})))


def test_old_format_configs_map_to_the_preset_spec():
    """A config.json of a run written before architectures were recorded: its identity is unchanged."""
    old = {**tr.train_config("quick", data="digits", patch_size=2).to_dict()}
    del old["architecture"]
    config = tr.TrainConfig(**old)
    assert config.model_spec() == DiTSpec.preset("quick", patch_size=2)
    assert "architecture" not in config.identity()
    recorded = config.with_spec(TinyConvSpec(5))
    assert recorded.identity()["architecture"] == {"features": 5} and recorded.size is None
    assert recorded.model_spec() == TinyConvSpec(5)
    with pytest.raises(ArgumentError, match=r"^model: unknown architecture 'vit'"):
        tr.TrainConfig(model="vit")
    with pytest.raises(ArgumentError, match=r"^features:"):
        tr.TrainConfig(model="tiny_conv", size=None, architecture={"features": 0})
    with pytest.raises(ArgumentError, match=r"^size:"):
        tr.TrainConfig(model="tiny_conv", size="full")
    assert tr.parse_field_value("architecture", '{"features": 2}') == {"features": 2}
    with pytest.raises(ArgumentError, match=r"^architecture: expected a JSON object"):
        tr.parse_field_value("architecture", "[1]")


def _tiny_config(**overrides) -> tr.TrainConfig:
    values = dict(
        data="digits",
        num_train=32,
        num_test=16,
        patch_size=2,
        steps=2,
        batch_size=8,
        warmup_steps=1,
        num_samples=0,
        log_every=1,
        T=100,
        sample_steps=4,
    )
    return tr.train_config("quick", **{**values, **overrides})


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> tuple[Path, tr.TrainResult]:
    out = tmp_path_factory.mktemp("user_run")
    result = tr.train(_tiny_config(), out, progress=False, evaluate=False, model=TinyConvSpec(features=3))
    return out, result


@pytest.mark.slow
def test_a_user_spec_trains_and_reloads(user_run):
    """Two steps of train(model=spec); load_run rebuilds the spec and gives the trained EMA eps."""
    out, result = user_run
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["model"] == "tiny_conv" and recorded["architecture"] == {"features": 3}
    assert recorded["size"] is None
    run = tr.load_run(out)
    assert run.module == TinyConvSpec(features=3).build((8, 8, 1)) and run.config == result.config
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 1)), jnp.float32)
    trained = models.as_eps_fn(TinyConvSpec(features=3).build((8, 8, 1)), result.state.ema_params)
    np.testing.assert_array_equal(run.eps_fn(x, 7), trained(x, 7))
    assert int(run.state.step) == 2


def test_an_unregistered_or_unrecorded_architecture_is_refused(tmp_path):
    config = _tiny_config().with_spec(TinyConvSpec(features=3)).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**config, "model": "my_net"}))
    with pytest.raises(ArgumentError, match=r"^model: unknown architecture 'my_net'; registered: .*tiny_conv"):
        tr.load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model": None, "architecture": None}))
    with pytest.raises(ArgumentError, match=r"^model: this run's architecture was not recorded"):
        tr.load_run(tmp_path)


@pytest.mark.slow
def test_pifs_jax_analyze_runs_on_a_user_spec(user_run, tmp_path, capsys):
    out, _ = user_run
    analysis = tmp_path / "analysis"
    status = cli.main(["analyze", "--run", str(out), "--samples", "2", "--steps", "2", "--out", str(analysis)])
    assert status == 0, capsys.readouterr().err
    document = json.loads((analysis / "analysis.json").read_text())
    assert document["config"]["train_config"]["model"] == "tiny_conv"
    assert document["results"]["trajectories"] == 2


@pytest.mark.slow
def test_an_old_format_run_folder_loads(tmp_path):
    """config.json and checkpoint as written before architectures were recorded ("model", "size" only)."""
    config = _tiny_config(model="dit")
    module, init_fn = tr.model_for_config(config, (8, 8, 1))
    _, state = tr.initial_train_state(config, init_fn)
    old = config.to_dict()
    del old["architecture"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    save_checkpoint(
        tmp_path / CHECKPOINT_NAME, state, config={k: v for k, v in old.items() if k not in config.RUN_CONTROL}
    )
    run = tr.load_run(tmp_path)
    assert run.module == DiTSpec.preset("quick", patch_size=2).build((8, 8, 1)) == module
