"""Removing or replacing an inherited key: ``_delete_: true`` in YAML, ``~key`` on the command
line."""

from __future__ import annotations

from pathlib import Path

import pytest

from spcl.config import ConfigError, load_config

ROOTS = ["data.source.root=/s", "data.target.root=/t", "data.target_val.root=/t"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def base_and_child(tmp_path: Path) -> tuple[Path, Path]:
    base = _write(
        tmp_path / "base.yaml",
        "model: {name: deeplabv2_resnet18, options: {dilations: [6, 12], projection_dim: 8}}\n"
        "online: {crop: [64, 64]}\n",
    )
    child = _write(
        tmp_path / "child.yaml",
        "base: base.yaml\nmodel: {name: daformer_mit_b0, options: {fusion: conv1}}\n",
    )
    return base, child


def test_an_inherited_option_the_new_model_refuses_stops_at_load(base_and_child) -> None:
    _, child = base_and_child
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['dilations'\].*~model\.options"):
        load_config(child, ROOTS)


def test_delete_marker_replaces_the_inherited_mapping(tmp_path: Path, base_and_child) -> None:
    _write(
        tmp_path / "child.yaml",
        "base: base.yaml\nmodel:\n  name: daformer_mit_b0\n"
        "  options: {_delete_: true, fusion: conv1}\n",
    )
    config = load_config(tmp_path / "child.yaml", ROOTS)
    assert config.model.options == {"fusion": "conv1"}
    assert config.online.crop == [64, 64]  # untouched sections still merge


def test_an_empty_delete_marker_clears_and_false_merges(tmp_path: Path, base_and_child) -> None:
    _write(tmp_path / "a.yaml", "base: base.yaml\nmodel: {options: {_delete_: true}}\n")
    assert load_config(tmp_path / "a.yaml", ROOTS).model.options == {}
    _write(tmp_path / "b.yaml", "base: base.yaml\nmodel: {options: {_delete_: false}}\n")
    assert load_config(tmp_path / "b.yaml", ROOTS).model.options == {
        "dilations": [6, 12],
        "projection_dim": 8,
    }


def test_a_replaced_section_starts_from_the_schema_defaults(tmp_path: Path, base_and_child) -> None:
    _write(tmp_path / "c.yaml", "base: base.yaml\nonline: {_delete_: true, hflip: false}\n")
    config, default = load_config(tmp_path / "c.yaml", ROOTS), load_config(None, ROOTS)
    assert config.online.crop == default.online.crop and config.online.hflip is False


def test_tilde_removes_a_key_on_the_command_line(base_and_child) -> None:
    _, child = base_and_child
    config = load_config(child, [*ROOTS, "~model.options.dilations"])
    assert config.model.options == {"projection_dim": 8, "fusion": "conv1"}
    config = load_config(child, [*ROOTS, "~model.options"])
    assert config.model.options == {}
    config = load_config(child, [*ROOTS, "~online.crop", "~model.options"])  # schema key: default
    assert config.online.crop == load_config(None, ROOTS).online.crop


def test_an_override_mapping_with_the_marker_replaces(base_and_child) -> None:
    _, child = base_and_child
    config = load_config(child, [*ROOTS, "model.options={_delete_: true, fusion: aspp}"])
    assert config.model.options == {"fusion": "aspp"}


def test_removal_then_setting_again_keeps_the_command_line_order(base_and_child) -> None:
    _, child = base_and_child
    config = load_config(
        child, [*ROOTS, "~model.options", "model.options.fusion=aspp", "~online.crop"]
    )
    assert config.model.options == {"fusion": "aspp"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("~model.options.nope", "no key 'model.options.nope' to remove"),
        ("~run.sed", "no key 'run.sed' to remove"),
        ("~model..name", "not of the form ~dotted.key"),
        ("~model.name=x", "not of the form ~dotted.key"),
        ("model.options={_delete_: 1}", r"'model.options._delete_' must be true or false"),
    ],
)
def test_bad_removals_are_named(base_and_child, override: str, message: str) -> None:
    _, child = base_and_child
    with pytest.raises(ConfigError, match=message):
        load_config(child, [*ROOTS, override])


def test_a_top_level_marker_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "x.yaml", "_delete_: true\n")
    with pytest.raises(ConfigError, match="belongs inside a mapping"):
        load_config(tmp_path / "x.yaml", ROOTS)


def test_unknown_model_names_and_options_are_refused_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"'model.name': unknown model 'resnet9'"):
        load_config(None, [*ROOTS, "model.name=resnet9"])
    with pytest.raises(ConfigError, match=r"'model.options'.*no option\(s\) \['fuson'\]"):
        load_config(None, [*ROOTS, "model.name=daformer_mit_b0", "model.options.fuson=aspp"])


def test_removals_may_follow_the_options_on_the_command_line(tmp_path: Path, capsys) -> None:
    from spcl.cli import main

    argv = ["config", "gta5_to_cityscapes_daformer_dlv2", "model.name=daformer_mit_b0"]
    assert main(argv) == 2
    assert "~model.options.dilations" in capsys.readouterr().err
    assert (
        main([*argv, "--save", str(tmp_path / "c.yaml"), "~model.options.dilations", *ROOTS]) == 0
    )
    assert "dilations" not in (tmp_path / "c.yaml").read_text()
