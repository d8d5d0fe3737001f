"""Config loading: schema defaults, YAML, base files, overrides, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spcl.config import ConfigError, dump_config, load_config, save_config
from spcl.config_schema import Config

ROOTS = [
    "data.source.root=/d/src",
    "data.target.root=/d/tgt",
    "data.target_val.root=/d/tgt",
]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_reference_recipe() -> None:
    config = load_config(None, ROOTS)
    assert config.warmup.optim.lr == 2.5e-4
    assert config.warmup.optim.head_lr_mult == 10.0
    assert (config.warmup.optim.max_iter, config.warmup.optim.stop_iter) == (62_500, 40_000)
    assert config.adapt.momentum == 0.1 and config.adapt.temperature == 100.0
    assert config.pseudo_labels.cap == 0.9
    assert config.self_train.optim.lr == 5e-4
    assert (config.self_train.optim.max_iter, config.self_train.optim.stop_iter) == (31_250, 20_000)


def test_yaml_then_overrides_in_order(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", {"model": {"width": 32}, "run": {"seed": 5}})
    config = load_config(path, [*ROOTS, "run.seed=7", "adapt.temperature=1"])
    assert config.model.width == 32
    assert config.run.seed == 7
    assert config.adapt.temperature == 1.0 and isinstance(config.adapt.temperature, float)
    # a nested section's own defaults survive a partial override
    config = load_config(path, [*ROOTS, "self_train.optim.stop_iter=10"])
    assert config.self_train.optim.stop_iter == 10 and config.self_train.optim.lr == 5e-4


def test_base_file_is_merged_under(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", {"model": {"width": 16, "name": "deeplabv2_resnet18"}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "model": {"width": 8}})
    config = load_config(child, ROOTS)
    assert (config.model.name, config.model.width) == ("deeplabv2_resnet18", 8)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml", ROOTS)


def test_unknown_key_names_key_file_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", {"run": {"sede": 1}})
    with pytest.raises(ConfigError) as info:
        load_config(path, ROOTS)
    message = str(info.value)
    assert "run.sede" in message and str(path) in message and "seed" in message


def test_wrong_type_names_key_and_origin(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", {"optim": 1} | {"run": {"seed": "three"}})
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        load_config(path, ROOTS)
    path = write(tmp_path / "bad2.yaml", {"run": {"seed": "three"}})
    with pytest.raises(ConfigError, match=r"bad2.yaml.*run.seed.*expects an int"):
        load_config(path, ROOTS)
    with pytest.raises(ConfigError, match=r"override 'run.deterministic=2'.*expects a bool"):
        load_config(None, [*ROOTS, "run.deterministic=2"])
    with pytest.raises(ConfigError, match=r"adapt.absent_policy.*one of \['zero_fill', 'keep'\]"):
        load_config(None, [*ROOTS, "adapt.absent_policy=drop"])
    with pytest.raises(ConfigError, match=r"data.source.size\[1\]"):
        load_config(None, [*ROOTS, "data.source.size=[1, x]"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(None, [*ROOTS, "run=3"])


def test_bool_is_not_an_int_and_int_is_a_float() -> None:
    with pytest.raises(ConfigError, match=r"run.seed"):
        load_config(None, [*ROOTS, "run.seed=true"])
    assert load_config(None, [*ROOTS, "adapt.lambda_cl=2"]).adapt.lambda_cl == 2.0


def test_missing_required_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.source.root.*data.target.root"):
        load_config(None)
    config = load_config(None, require_all=False)
    assert config.data.source.root == "???"


def test_optional_value_accepts_null() -> None:
    assert load_config(None, [*ROOTS, "model.pretrained=null"]).model.pretrained is None
    assert load_config(None, [*ROOTS, "model.pretrained=/w.pth"]).model.pretrained == "/w.pth"


def test_bad_override_syntax_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dotted.key=value"):
        load_config(None, ["run.seed"])
    with pytest.raises(ConfigError, match=r"dotted.key=value"):
        load_config(None, ["run..seed=1"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list.yaml: expected a mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match=r"not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_dump_and_save_round_trip(tmp_path: Path) -> None:
    config = load_config(None, [*ROOTS, "run.seed=11", "model.width=24"])
    target = tmp_path / "sub" / "config.yaml"
    save_config(config, target)
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]  # no temp file left
    again = load_config(target)
    assert again == config
    assert dump_config(config).startswith("model:")
    assert isinstance(again, Config)
