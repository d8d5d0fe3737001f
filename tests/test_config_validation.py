"""Config values are checked where they are declared: ranges, relations, list lengths, and numbers
in scientific notation are numbers in YAML files and overrides alike.

Before, ``warmup.optim.lr=1e-4`` was refused (YAML 1.1 reads ``1e-4`` as a string), while
``batch_size=0``, ``grad_accum=0``, ``run.ckpt_every=0``, ``stop_iter`` above ``max_iter``, an
empty ``run.stages`` and a one-number ``size`` were accepted and failed (or misbehaved) later.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spcl.base import ConfigError, load_yaml
from spcl.cli import main
from spcl.config import load_config

ROOTS = ["data.source.root=/d/src", "data.target.root=/d/tgt", "data.target_val.root=/d/tgt"]


def test_scientific_notation_in_overrides_lists_and_files(tmp_path: Path) -> None:
    config = load_config(None, [*ROOTS, "warmup.optim.lr=1e-4", "evaluate.scales=[5e-1, 1, 1.5E0]"])
    assert config.warmup.optim.lr == 1e-4
    assert config.evaluate.scales == [0.5, 1.0, 1.5]
    path = tmp_path / "c.yaml"
    path.write_text("adapt:\n  optim:\n    lr: 2e-5\n    min_lr: -0e0\n    max_iter: 4e4\n")
    config = load_config(path, ROOTS)
    assert config.adapt.optim.lr == 2e-5
    assert config.adapt.optim.max_iter == 40_000 and isinstance(config.adapt.optim.max_iter, int)


def test_the_yaml_reader_keeps_strings_and_ints() -> None:
    assert load_yaml("[1e-4, 12, abc, e5, 1e, 1.0e-4, -3E+2]") == [
        1e-4, 12, "abc", "e5", "1e", 1e-4, -300.0,
    ]  # fmt: skip


def test_a_word_yaml_reads_as_a_boolean_is_the_word_where_a_choice_is_expected(
    tmp_path: Path,
) -> None:
    """Before, ``run.amp=off`` (what docs and configs call the setting) was refused: YAML 1.1
    reads ``off`` as False, and ``run.amp`` expects one of ['off', 'bf16', 'fp16']."""
    assert load_config(None, [*ROOTS, "run.amp=off"]).run.amp == "off"
    assert load_config(None, [*ROOTS, "run.amp=OFF"]).run.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  amp: off\n")
    assert load_config(path, ROOTS).run.amp == "off"
    with pytest.raises(ConfigError, match=r"'run\.amp' expects one of \['off', 'bf16', 'fp16'\]"):
        load_config(None, [*ROOTS, "run.amp=yes"])  # no choice is read as True: still refused


def test_a_key_named_twice_in_one_mapping_is_refused_naming_file_and_lines(
    tmp_path: Path,
) -> None:
    """Before, PyYAML kept the last of two values silently: a shipped config named
    ``online.optim.grad_accum`` twice (both 1), and a file with two learning rates trained with
    the second, unsaid. YAML merge keys (``<<: *anchor``) may still be overridden."""
    path = tmp_path / "c.yaml"
    path.write_text("warmup:\n  optim:\n    lr: 1e-4\n    batch_size: 2\n    lr: 2e-4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: .*line 5: key 'lr' appears twice .*line 3"):
        load_config(path, ROOTS)
    with pytest.raises(ConfigError, match=r"key 'a' appears twice"):
        load_config(None, [*ROOTS, "data.source.options={a: 1, a: 2}"])
    assert load_yaml("x: &d {lr: 1, b: 2}\ny:\n  <<: *d\n  lr: 3\n")["y"] == {"lr": 3, "b": 2}


def test_a_fractional_number_is_no_iteration_count() -> None:
    with pytest.raises(ConfigError, match=r"'warmup\.optim\.max_iter' expects an int, got 2\.5"):
        load_config(None, [*ROOTS, "warmup.optim.max_iter=2.5"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("warmup.optim.batch_size=0", "'warmup.optim.batch_size' must be >= 1, got 0"),
        ("adapt.optim.batch_size=-2", "'adapt.optim.batch_size' must be >= 1, got -2"),
        ("warmup.optim.grad_accum=0", "'warmup.optim.grad_accum' must be >= 1, got 0"),
        ("run.ckpt_every=0", "'run.ckpt_every' must be >= 1, got 0"),
        ("run.log_every=0", "'run.log_every' must be >= 1, got 0"),
        ("warmup.optim.lr=-1e-3", "'warmup.optim.lr' must be >= 0, got -0.001"),
        ("warmup.optim.lr=.nan", "'warmup.optim.lr' must be a number, got nan"),
        ("warmup.optim.lr=.inf", "'warmup.optim.lr' must be a finite number, got inf"),
        ("online.teacher.alpha=-.inf", "'online.teacher.alpha' must be a finite number"),
        ("pseudo_labels.cap=0", "'pseudo_labels.cap' must be > 0, got 0.0"),
        ("adapt.temperature=0", "'adapt.temperature' must be > 0, got 0.0"),
        ("adapt.momentum=1.5", "'adapt.momentum' must be <= 1, got 1.5"),
        ("warmup.optim.betas=[0.9, 1]", "'warmup.optim.betas[1]' must be < 1, got 1.0"),
        ("data.num_classes=0", "'data.num_classes' must be >= 1, got 0"),
        ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
        ("run.stages=[]", "'run.stages' must be a non-empty list, got []"),
        ("evaluate.scales=[]", "'evaluate.scales' must be a non-empty list, got []"),
        ("data.source.size=[128]", "'data.source.size' must be a list of 0 or 2 values"),
        ("evaluate.slide=[8, 8, 4]", "'evaluate.slide' must be a list of 0 or 4 values"),
        ("warmup.optim.betas=[0.9]", "'warmup.optim.betas' must be a list of 2 values"),
        ("self_train.crop=[0, 64]", "'self_train.crop[0]' must be >= 1, got 0"),
    ],
)
def test_values_out_of_range_name_key_origin_and_range(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [*ROOTS, override])
    assert str(error.value).startswith(f"override '{override}': ")
    assert expected in str(error.value)


def test_stop_iter_above_max_iter_names_both_keys_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("warmup:\n  optim:\n    max_iter: 100\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, [*ROOTS, "warmup.optim.stop_iter=200"])
    message = str(error.value)
    assert message.startswith("override 'warmup.optim.stop_iter=200': ")
    assert "'warmup.optim.stop_iter' and 'warmup.optim.max_iter'" in message
    assert "stop_iter (200) must be <= max_iter (100)" in message
    # the order of overrides does not matter: the relation is checked on the merged values
    config = load_config(path, [*ROOTS, "warmup.optim.stop_iter=200", "warmup.optim.max_iter=300"])
    assert config.warmup.optim.stop_iter == 200
    # a file's own values are checked too, and named by the file
    path.write_text("online:\n  optim:\n    max_iter: 10\n")
    with pytest.raises(ConfigError, match=rf"^{path}: 'online.optim.stop_iter'"):
        load_config(path, ROOTS)


def test_values_that_make_no_sense_together_are_refused_at_load() -> None:
    """Before: accepted; the contrast never started, every pseudo-label weight was 0."""
    with pytest.raises(ConfigError) as error:
        load_config(None, [*ROOTS, "online.contrast.target=true", "online.optim.stop_iter=2000"])
    assert "'online.contrast.start_iter' and 'online.optim.stop_iter'" in str(error.value)
    assert "starts at iteration 3000 but the stage stops at 2000" in str(error.value)
    load_config(None, [*ROOTS, "online.optim.stop_iter=2000"])  # no contrast: nothing to start
    with pytest.raises(ConfigError) as error:
        load_config(None, [*ROOTS, "online.pseudo.crop_top=100000"])
    assert str(error.value).startswith("override 'online.pseudo.crop_top=100000': ")
    assert "100000 + 0 rows zeroed of a target crop 512 pixels high (online.crop)" in str(
        error.value
    )


def test_scale_range_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="low <= high"):
        load_config(None, [*ROOTS, "self_train.scale_range=[1.5, 0.5]"])


def test_malformed_override_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "demo", "evaluate.scales=[1,,2]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "override 'evaluate.scales=[1,,2]': value is not valid YAML" in err
    assert "at character 4" in err
