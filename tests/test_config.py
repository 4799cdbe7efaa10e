"""The typed config: presets load completely, bad keys and types are named, overrides are checked."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamctl.config import Config, all_keys, apply_overrides, from_dict, load_config, preset_names
from dreamctl.config_rules import validate
from dreamctl.errors import UsageError


def test_bundled_presets_set_every_key():
    import yaml

    from dreamctl.config import find_preset

    names = ("atari", "atari100k", "catch2", "debug", "dmc", "humanoid", "multiagent", "pixels", "smax", "vector")
    assert set(names) == set(preset_names())
    for name in names:
        data = yaml.safe_load(find_preset(name).read_text())
        keys = {f"{section}.{key}" for section, values in data.items() for key in values}
        assert keys == set(all_keys()), name
        validate(load_config(name))


def test_dataclass_defaults_are_the_atari_preset():
    """One source of truth: a config built from the dataclasses alone is the paper's Atari preset."""
    assert Config().to_dict() == load_config("atari").to_dict()


def test_every_config_field_is_documented_where_it_is_defined():
    import ast
    import inspect

    import dreamctl.config as config

    tree = ast.parse(inspect.getsource(config))
    undocumented = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for field, after in zip(body, [*body[1:], None]):
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name):
                    documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    if not documented and node.name != "Config":
                        undocumented.append(f"{node.name}.{field.target.id}")
    assert not undocumented, undocumented


def test_atari_preset_carries_the_paper_values():
    c = load_config("atari")
    assert (c.env.image_size, c.env.grayscale, c.model.cnn_depth, c.model.deter, c.model.stoch, c.model.classes) == (
        64,
        True,
        48,
        600,
        32,
        32,
    )
    assert (c.model.mlp_layers, c.model.mlp_units, c.train.batch_size, c.train.batch_length) == (4, 400, 16, 50)
    assert (c.behavior.horizon, c.behavior.return_lambda, c.behavior.discount) == (15, 0.95, 0.999)
    assert (c.model.kl_balance, c.model.kl_scale, c.model.free_nats, c.model.discount_scale) == (0.8, 0.1, 0.0, 5.0)
    assert (c.train.model_lr, c.train.actor_lr, c.train.critic_lr) == (2e-4, 4e-5, 1e-4)
    assert (c.train.adam_eps, c.train.grad_clip, c.train.weight_decay, c.behavior.actor_entropy) == (
        1e-5,
        100.0,
        1e-6,
        1e-3,
    )
    assert (c.behavior.slow_critic_every, c.train.train_every, c.train.prefill, c.train.replay_capacity) == (
        100,
        16,
        50_000,
        2_000_000,
    )


def test_unknown_key_names_the_key_and_suggests_the_closest():
    with pytest.raises(UsageError, match=r"unknown config key 'model.detr' in --set \(did you mean 'model.deter'\?\)"):
        load_config("debug", ["model.detr=3"])
    with pytest.raises(UsageError, match="unknown section 'modle'"):
        from_dict({"modle": {"deter": 3}})
    with pytest.raises(UsageError, match="unknown section '1'"):  # YAML reads `1:` as a number
        from_dict({1: {"a": 2}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.deter=abc", "model.deter in --set must be an integer"),
        ("model.kl_scale=yes", "model.kl_scale in --set must be a number"),
        ("env.grayscale=3", "env.grayscale in --set must be true or false"),
        ("run.precision=64", "run.precision in --set must be one of auto, 32, bf16, 16"),
        ("novalue", "must look like key=value"),
    ],
)
def test_wrong_types_are_named(override, message):
    with pytest.raises(UsageError, match=message):
        load_config("debug", [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=0", "train.steps must be positive, got 0."),
        ("env.num_envs=-1", "env.num_envs must be positive"),
        ("behavior.discount=1.5", "behavior.discount must lie in"),
        ("train.replay_capacity=3", "train.batch_length steps per env copy"),
        ("behavior.slow_critic_every=0", "behavior.slow_critic_every must be positive"),  # was a ZeroDivisionError
        ("train.model_lr=-1", "train.model_lr must be positive"),  # was torch's "Invalid learning rate"
        ("train.grad_clip=0", "train.grad_clip must be positive"),
        ("model.kl_scale=-0.1", "model.kl_scale must not be negative"),
        ("model.reward_multiplier=0", "model.reward_multiplier must be positive"),
        ("behavior.actor_entropy=-1e-3", "behavior.actor_entropy must not be negative"),
        ("train.actor_lr=.nan", "train.actor_lr must be a finite number, got nan."),
        ("model.reward_scale=.inf", "model.reward_scale must be a finite number, got inf."),
        ("env.cnn_keys=(", "env.cnn_keys is not a valid regular expression"),  # was re.error, found at env creation
    ],
)
def test_values_out_of_range_are_refused(override, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        validate(load_config("debug", [override]))


def test_a_section_named_as_a_key_is_said_to_be_a_section():
    with pytest.raises(UsageError, match=r"'model' in --set is a section, not a key; name a key in it, such as "):
        load_config("debug", ["model=3"])


def test_preset_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(UsageError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


@given(st.integers(1, 10**9))
def test_integer_overrides_round_trip(value):
    assert apply_overrides(Config(), [f"train.steps={value}"]).train.steps == value


def test_overrides_do_not_mutate_the_original():
    base = Config()
    apply_overrides(base, ["model.deter=7"])
    assert base.model.deter == 600


@given(st.floats(1e-12, 1e12, allow_nan=False, allow_infinity=False))
def test_float_overrides_in_exponent_notation_are_numbers(value):
    """YAML 1.1 reads 3e-2 (an exponent without a dot) as a string; a config key that wants a number takes it."""
    mantissa, exponent = f"{value:.3e}".split("e")
    text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    assert apply_overrides(Config(), [f"behavior.actor_entropy={text}"]).behavior.actor_entropy == float(text)


def test_exponent_notation_sets_integers_only_when_whole():
    assert apply_overrides(Config(), ["train.steps=1e5"]).train.steps == 100_000
    with pytest.raises(UsageError, match=r"train\.steps in --set must be an integer"):
        apply_overrides(Config(), ["train.steps=1.5e0"])
