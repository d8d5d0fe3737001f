"""benchmarks/contrast_diagnostics.py on a tiny finished run: the temperature's effect on the
contrastive gradient is measured the right way round, the τ = 100 loss sits at ln K, the numbers
repeat, every table is printed, and a run without its inputs fails with a clear message.

One tiny run (4+4 images of 64×128, width-8 model, 2 warm-up steps, 1 adaptation step) is made
once for the module.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spcl.config import load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.pipeline import run_pipeline
from tiny import TINY

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "contrast_diagnostics.py"
TINY_RUN = (
    *TINY,
    "adapt.optim.max_iter=1",
    "adapt.optim.stop_iter=1",
    "run.stages=[warmup, prototypes, pseudo_labels, adapt]",
)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("contrast_diagnostics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def diag() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished warm-up → prototypes → pseudo-labels → adaptation run on a tiny pair."""
    root = tmp_path_factory.mktemp("diag")
    data = generate_pair(
        root / "data", seed=3, n_train=4, n_val=2, size=(64, 128), preview=False, progress=False
    )
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    run_dir = root / "run"
    config = load_config("demo", [*TINY_RUN, *roots, f"run.out={run_dir}"])
    with open_run(config) as ctx:
        run_pipeline(ctx)
    return run_dir


def _measure(diag: ModuleType, run: Path, **kwargs: Any) -> Any:
    files = diag.locate_run(run)
    ctx = diag.open_context(run, "cpu")
    return diag.measure(ctx, files, 2, (100.0, 1.0, 0.1), **kwargs)


def test_temperature_scales_the_contrastive_gradient(diag: ModuleType, tiny_run: Path) -> None:
    got = _measure(diag, tiny_run, train=True)
    ln_k = math.log(got.num_classes)
    for domain in ("source", "target"):
        ref, sharp = (got.terms[diag.term_name(domain, tau)] for tau in (100.0, 0.1))
        assert abs(ref["loss"] - ln_k) < 0.05, (domain, ref["loss"], ln_k)  # near-uniform softmax
        assert 0 < ref["param"] < sharp["param"], (domain, ref["param"], sharp["param"])
        assert ref["feature"] < sharp["feature"]
        assert ref["param"] < 0.1 * got.terms[diag.CE_SRC]["param"]  # τ = 100: a tiny term
    assert got.terms[diag.CE_SRC]["cos"] == pytest.approx(1.0)
    for name in (diag.SRC, diag.TGT):
        assert got.max_prob[(name, 100.0)] < 1.5 / got.num_classes < got.max_prob[(name, 0.1)]
    assert diag.GT in got.accuracy  # the synthetic target has labels
    again = _measure(diag, tiny_run, train=True)
    assert again.terms == got.terms and again.accuracy == got.accuracy  # seeded: repeatable


def test_main_prints_every_table(diag: ModuleType, tiny_run: Path, capsys) -> None:
    args = [str(tiny_run), "--batches", "1", "--temperatures", "100,0.1", "--eval-mode"]
    assert diag.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("`python benchmarks/contrast_diagnostics.py")
    for caption in ("### 1.", "### 2a.", "### 2b.", "### 3a.", "### 3b.", "### 4."):
        assert caption in out, caption
    assert "model in eval mode" in out and "| contrast target, τ=0.1 |" in out
    assert "| road |" in out and "coverage 03_pseudo_labels" in out


def test_missing_input_names_the_file_and_the_command(
    diag: ModuleType, tiny_run: Path, tmp_path: Path, capsys
) -> None:
    assert diag.main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.yaml'} is missing" in capsys.readouterr().err
    shutil.copy(tiny_run / "config.yaml", tmp_path / "config.yaml")
    assert diag.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "01_warmup" / "model.pth") in err and "spcl run " in err
