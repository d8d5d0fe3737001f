"""The training loop: exact resume, gradient accumulation, NaN detection, the weighted total and
the after-step hooks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from spcl.data.loaders import InfiniteLoader
from spcl.engine.loop import LoopConfig, step_terms, train_loop, weighted_total
from spcl.engine.optim import poly_scheduler
from spcl.engine.tracking import Tracker


class _Noisy(Dataset):
    """Regression samples whose noise depends on the per-sample seed (like augmentation)."""

    def __init__(self, n: int = 12) -> None:
        self.x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        noise = torch.randn(3, generator=torch.Generator().manual_seed(seed))
        return {"x": self.x[index] + 0.1 * noise, "y": self.x[index].sum(0, keepdim=True)}


def _train(
    tmp: Path,
    stop: int,
    *,
    ckpt_every: int = 3,
    grad_accum: int = 1,
    seen: list[tuple[int, int]] | None = None,
) -> nn.Module:
    """Build everything afresh (as a restarted process would) and train to ``stop``; ``seen``
    gets (iteration given to the step, the schedule's ``last_epoch`` then) for every call."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = poly_scheduler(opt, max_iter=20)
    loader = InfiniteLoader(_Noisy(), batch_size=4, seed=5)

    def step(iteration: int) -> dict[str, torch.Tensor]:
        if seen is not None:
            seen.append((iteration, schedule.last_epoch))
        batch = next(loader)
        loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
        return {"mse": loss}

    config = LoopConfig(
        stop_iter=stop,
        checkpoint=tmp / "ckpt.pth",
        ckpt_every=ckpt_every,
        log_every=2,
        grad_accum=grad_accum,
    )
    state = {"model": model, "opt": opt, "schedule": schedule, "loader": loader}
    tracker = Tracker(tmp, progress=False)
    train_loop(
        step,
        weights={"mse": 1.0},
        state=state,
        optimizers=[opt],
        schedulers=[schedule],
        config=config,
        tracker=tracker,
    )
    tracker.close()
    return model


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path: Path) -> None:
    straight = _train(tmp_path / "a", stop=10)
    # a first process stops at 7 (its last checkpoint: iteration 7) ...
    _train(tmp_path / "b", stop=7, ckpt_every=3)
    # ... a fresh one, built from scratch with the full schedule, resumes from there
    resumed = _train(tmp_path / "b", stop=10, ckpt_every=3)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "resumed from" in log and "iteration 7" in log


def test_a_finished_checkpoint_means_no_more_steps(tmp_path: Path) -> None:
    first = _train(tmp_path, stop=4, ckpt_every=4)
    again = _train(tmp_path, stop=4, ckpt_every=4)
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_grad_accum_draws_more_batches_and_averages(tmp_path: Path) -> None:
    model = _train(tmp_path / "acc", stop=2, grad_accum=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_step_is_given_its_iteration_also_after_a_resume(tmp_path: Path) -> None:
    straight: list[tuple[int, int]] = []
    _train(tmp_path / "a", stop=5, grad_accum=2, seen=straight)
    # every micro-batch of iteration i is given i, which is the schedule's count of steps
    assert straight == [(i, i) for i in range(5) for _ in range(2)]
    _train(tmp_path / "b", stop=3, ckpt_every=3)
    resumed: list[tuple[int, int]] = []
    _train(tmp_path / "b", stop=5, ckpt_every=3, seen=resumed)
    assert resumed == [(3, 3), (4, 4)]  # the loop's count after the resume


def test_non_finite_loss_names_the_iteration(tmp_path: Path) -> None:
    param = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([param], lr=0.1)
    calls = iter(range(100))

    def step(iteration: int) -> dict[str, torch.Tensor]:
        i = next(calls)
        value = param * (float("nan") if i == 2 else 1.0)
        return {"term": value.sum()}

    config = LoopConfig(stop_iter=5, checkpoint=tmp_path / "c.pth", tag="t")
    with pytest.raises(FloatingPointError, match=r"\[t\] iteration 3"):
        train_loop(
            step,
            weights={"term": 1.0},
            state={},
            optimizers=[opt],
            schedulers=[],
            config=config,
            tracker=Tracker(tmp_path, enabled=False),
        )


def test_tensorboard_and_log_are_written(tmp_path: Path) -> None:
    _train(tmp_path, stop=4)
    assert any((tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "log.txt").exists()


def test_weighted_total_sums_the_weighted_terms_in_order() -> None:
    terms = {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "monitor": torch.tensor(100.0)}
    assert float(weighted_total(terms, {"a": 1.0, "b": 0.5})) == 2.0 + 0.5 * 3.0  # monitor left out
    assert weighted_total(terms, {"a": 1.0}) is terms["a"]  # weight 1: the term itself
    with pytest.raises(KeyError, match="'c'"):
        weighted_total(terms, {"a": 1.0, "c": 1.0})
    with pytest.raises(KeyError):
        weighted_total(terms, {})


class _Counter(nn.Module):
    """An after-step hook with state: it records the step counts it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(0, dtype=torch.long))

    def __call__(self, done: int) -> None:
        self.calls = torch.cat([self.calls, torch.tensor([done])])

    def load_state_dict(self, state, strict: bool = True):  # the buffer changes size
        self.calls = state["calls"].clone()


def _hooked(tmp: Path, stop: int, seen: list[float]) -> _Counter:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    counter = _Counter()

    def hook(done: int) -> None:  # runs after the optimiser step: it sees the updated parameter
        seen.append(float(param.detach()))
        counter(done)

    train_loop(
        lambda _: {"pull": (param - 10.0).square().sum(), "watch": param.sum()},
        weights={"pull": 0.25},
        state={"param": nn.ParameterList([param]), "opt": opt, "counter": counter},
        optimizers=[opt],
        schedulers=[],
        config=LoopConfig(stop_iter=stop, checkpoint=tmp / "c.pth", ckpt_every=2),
        tracker=Tracker(tmp, enabled=False),
        after_step=[hook],
    )
    return counter


def test_after_step_hooks_run_after_each_step_and_resume_with_their_state(tmp_path: Path) -> None:
    seen: list[float] = []
    counter = _hooked(tmp_path, 4, seen)
    assert counter.calls.tolist() == [1, 2, 3, 4]
    # loss 0.25·(p − 10)², lr 1: p ← p − 0.5·(p − 10) = (p + 10)/2 (only "pull" is weighted)
    expected, p = [], 0.0
    for _ in range(4):
        p = (p + 10.0) / 2
        expected.append(p)
    assert seen == pytest.approx(expected)
    resumed = _hooked(tmp_path, 6, [])  # restarts from the checkpoint of step 4
    assert resumed.calls.tolist() == [1, 2, 3, 4, 5, 6]


class _Generator:
    """A rank-seeded generator, as the online stage's mixing and masking draws use."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(7)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


def _draws(tmp: Path, stop: int, seed: int = 0) -> torch.Tensor:
    """Each step draws from a rank-local generator and from the global RNG (as Dropout does)."""
    torch.manual_seed(seed)  # another seed: a restarted process whose global RNG is elsewhere
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    generator = _Generator()

    def step(iteration: int) -> dict[str, torch.Tensor]:
        target = torch.rand(1, generator=generator.generator) + torch.rand(1)
        return {"pull": (param - target).square().sum()}

    train_loop(
        step,
        weights={"pull": 1.0},
        state={"param": nn.ParameterList([param]), "opt": opt},
        optimizers=[opt],
        schedulers=[],
        config=LoopConfig(stop_iter=stop, checkpoint=tmp / "c.pth", ckpt_every=1),
        tracker=Tracker(tmp, enabled=False),
        rank_state={"generator": generator},
    )
    return param.detach().clone()


def test_rank_states_and_global_rngs_resume_exactly(tmp_path: Path) -> None:
    straight = _draws(tmp_path / "straight", 6)
    _draws(tmp_path / "resumed", 3)
    assert torch.equal(_draws(tmp_path / "resumed", 6, seed=1), straight)
    # a checkpoint written before per-rank states (rank 0's RNGs in _loop, the generator beside
    # the other objects) resumes as well
    _draws(tmp_path / "old", 3)
    payload = torch.load(tmp_path / "old" / "c.pth", weights_only=True)
    payload["generator"] = payload["_loop"].pop("ranks")[0]["generator"]
    torch.save(payload, tmp_path / "old" / "c.pth")
    assert torch.equal(_draws(tmp_path / "old", 6, seed=1), straight)


def test_checkpoint_due_is_the_rule_the_loop_saves_by(tmp_path: Path, monkeypatch) -> None:
    from spcl.engine import loop

    saved: list[int] = []
    real = loop.save_state
    monkeypatch.setattr(
        loop, "save_state", lambda p, path: (saved.append(p["_loop"]["iteration"]), real(p, path))
    )
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    config = LoopConfig(stop_iter=7, checkpoint=tmp_path / "c.pth", ckpt_every=3)
    due: list[int] = []
    train_loop(
        lambda _: {"pull": (param - 1.0).square().sum()},
        weights={"pull": 1.0},
        state={"opt": opt},
        optimizers=[opt],
        schedulers=[],
        config=config,
        tracker=Tracker(tmp_path, enabled=False),
        after_step=[lambda done: due.append(done) if loop.checkpoint_due(config, done) else None],
    )
    assert saved == due == [3, 6, 7]


# --- steps that hand the loop one part per forward pass -----------------------------------------


def _two_pass_loop(tmp: Path, per_pass: bool, steps: int = 3, **loop: object) -> tuple:
    """Train a small MLP with two passes per step (two batches, two terms) either as one mapping
    or as two parts; returns (weights, the log text, the first pass's graph after its part)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(steps, 2, 4, 3, generator=torch.Generator().manual_seed(1))
    freed: list[bool] = []

    def passes(iteration: int):
        first = model(data[iteration, 0]).pow(2).mean()
        if per_pass:
            yield {"a": first}
            with pytest.raises(RuntimeError, match="second time"):  # its graph is gone already
                first.backward()
            freed.append(True)
            yield {"b": model(data[iteration, 1]).abs().mean(), "watch": first.detach()}
        else:
            yield {"a": first, "b": model(data[iteration, 1]).abs().mean(), "watch": first}

    def step(iteration: int):
        return passes(iteration) if per_pass else next(passes(iteration))

    tracker = Tracker(tmp, progress=False)
    try:
        train_loop(
            step,
            weights={"a": 1.0, "b": 0.5},
            state={},
            optimizers=[opt],
            schedulers=[],
            config=LoopConfig(stop_iter=steps, checkpoint=tmp / "c.pth", log_every=1, **loop),
            tracker=tracker,
        )
    finally:
        tracker.close()
    return [p.detach().clone() for p in model.parameters()], (tmp / "log.txt").read_text(), freed


def test_a_step_in_parts_backpropagates_each_before_the_next_and_sums_the_gradients(
    tmp_path: Path,
) -> None:
    joint, joint_log, _ = _two_pass_loop(tmp_path / "joint", per_pass=False)
    parts, parts_log, freed = _two_pass_loop(tmp_path / "parts", per_pass=True)
    assert freed == [True] * 3  # the first pass's graph was released before the second ran
    for a, b in zip(joint, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the same terms and total are logged (the total as the sum of the parts' weighted sums)
    line = re.compile(r"iteration 3: (.*)$", re.MULTILINE)
    assert (
        line.search(joint_log)[1].split("sec_per_iter")[0]
        == (line.search(parts_log)[1].split("sec_per_iter")[0])
    )


def test_a_step_in_parts_with_grad_accum_averages_every_part(tmp_path: Path) -> None:
    joint, _, _ = _two_pass_loop(tmp_path / "joint", per_pass=False, steps=4, grad_accum=2)
    parts, _, _ = _two_pass_loop(tmp_path / "parts", per_pass=True, steps=4, grad_accum=2)
    for a, b in zip(joint, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([{"a": 1.0}, {"b": float("nan")}], r"\[t\] iteration 1: the loss is not finite \(a=1"),
        ([{"a": 1.0}, {"a": 2.0}], r"the same term twice"),
        ([{"a": 1.0}, {"watch": 2.0}], r"loss terms \['b'\] not among \['a', 'watch'\]"),
    ],
)
def test_a_step_in_parts_is_checked_part_by_part(
    tmp_path: Path, parts: list[dict[str, float]], message: str
) -> None:
    param = nn.Parameter(torch.ones(()))

    def step(iteration: int):
        for part in parts:
            yield {k: param * v for k, v in part.items()}

    with pytest.raises((FloatingPointError, KeyError), match=message):
        _sgd_loop(tmp_path, step, param, stop_iter=1)


def _sgd_loop(tmp_path: Path, step: Any, param: nn.Parameter, **loop: Any) -> None:
    """``step`` in the loop with terms a and b weighed 1, SGD (lr 0.1) on ``param``."""
    train_loop(
        step,
        weights={"a": 1.0, "b": 1.0},
        state={},
        optimizers=[torch.optim.SGD([param], lr=0.1)],
        schedulers=[],
        config=LoopConfig(checkpoint=tmp_path / "c.pth", tag="t", **loop),
        tracker=Tracker(tmp_path, enabled=False),
    )


def test_step_terms_merges_the_parts_of_a_step() -> None:
    one = torch.tensor(1.0)
    assert step_terms({"a": one}) == {"a": one}
    assert step_terms(iter([{"a": one}, {"b": one}])) == {"a": one, "b": one}


def test_reduce_grads_runs_once_per_iteration_after_every_micro_batch(tmp_path: Path) -> None:
    """The loop's gradient reduction (torchrun with per-pass backward) sees the whole step's
    gradient, every micro-batch and part in it, and the optimiser steps on what it leaves."""
    param = nn.Parameter(torch.ones(()))
    seen: list[float] = []

    def step(iteration: int):
        yield {"a": param * 1.0}
        yield {"b": param * 2.0}

    def reduce() -> None:
        seen.append(float(param.grad))
        param.grad.mul_(0.5)  # what the optimiser then applies

    _sgd_loop(tmp_path, step, param, stop_iter=3, grad_accum=2, reduce_grads=reduce)
    assert seen == [3.0, 3.0, 3.0]  # (1 + 2) per micro-batch, averaged over the two
    assert float(param.detach()) == pytest.approx(1.0 - 3 * 0.1 * 1.5)
