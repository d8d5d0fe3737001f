"""The resumable batch stream: same batches after a restore, disjoint rank shards, worker-proof."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from spcl.data.loaders import InfiniteLoader, SeededBatchSampler


class _Items(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        return {"index": torch.tensor(index), "seed": torch.tensor(seed)}


def _take(loader: InfiniteLoader, n: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(n):
        batch = next(loader)
        out.append((batch["index"].tolist(), batch["seed"].tolist()))
    return out


def test_restored_stream_continues_identically_across_epochs() -> None:
    straight = _take(InfiniteLoader(_Items(10), 3, seed=1), 8)  # 3 batches an epoch
    first = InfiniteLoader(_Items(10), 3, seed=1)
    head = _take(first, 4)
    state = first.state_dict()
    second = InfiniteLoader(_Items(10), 3, seed=1)
    second.load_state_dict(state)
    assert head + _take(second, 4) == straight
    assert state == {"epoch": 1, "offset": 1}


def test_epochs_are_reshuffled_and_seeded() -> None:
    batches = _take(InfiniteLoader(_Items(12), 4, seed=3), 6)
    epoch0 = sorted(i for b in batches[:3] for i in b[0])
    assert epoch0 == list(range(12))
    assert [b[0] for b in batches[:3]] != [b[0] for b in batches[3:]]
    other = _take(InfiniteLoader(_Items(12), 4, seed=4), 3)
    assert other != batches[:3]


def test_worker_processes_change_nothing() -> None:
    plain = _take(InfiniteLoader(_Items(10), 2, seed=2), 7)
    workers = _take(InfiniteLoader(_Items(10), 2, seed=2, num_workers=2), 7)
    assert plain == workers


def test_rank_shards_are_disjoint_and_cover_the_epoch() -> None:
    samplers = [SeededBatchSampler(12, 2, seed=0, shuffle=True, rank=r, world=3) for r in range(3)]
    seen = [i for s in samplers for batch in s for i, _ in batch]
    assert sorted(seen) == list(range(12))
    assert all(len(s) == 2 for s in samplers)


def test_too_small_dataset_is_named() -> None:
    with pytest.raises(ValueError, match="smaller than one batch"):
        SeededBatchSampler(3, 4, seed=0, shuffle=True)


class _WithBadItems(_Items):
    """Items 2 and 3 cannot be read (as a corrupt file would be)."""

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        if index in (2, 3):
            from spcl.base import DatasetError

            raise DatasetError(f"cannot read image img_{index}.png: truncated")
        return {"index": torch.tensor(index), "seed": torch.tensor(0)}


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_items_fail_naming_the_file_or_are_skipped_once(workers: int) -> None:
    from spcl.base import DatasetError
    from spcl.data.loaders import build_eval_loader

    with pytest.raises(DatasetError, match=r"^cannot read image img_2.png: truncated \(on_error"):
        list(build_eval_loader(_WithBadItems(6), num_workers=workers))
    warned: list[str] = []
    loader = build_eval_loader(
        _WithBadItems(6), num_workers=workers, on_error="skip", warn=warned.append
    )
    assert [int(b["index"]) for b in loader] == [0, 1, 4, 5]
    assert [int(b["index"]) for b in loader] == [0, 1, 4, 5]  # a second pass: no second warning
    assert warned == [
        f"skipped an unreadable file: cannot read image img_{i}.png: truncated" for i in (2, 3)
    ]
    stream = InfiniteLoader(
        _WithBadItems(6), 2, seed=0, shuffle=False, on_error="skip", num_workers=workers
    )
    assert [next(stream)["index"].tolist() for _ in range(3)] == [[0, 1], [4, 5], [0, 1]]


def test_no_loader_draws_from_the_global_torch_rng() -> None:
    # Dropout and DropPath draw from it: a stream whose iterators are made at other moments (a
    # resumed one) or an evaluation pass between steps must not move their draws
    from spcl.data.loaders import build_eval_loader

    torch.manual_seed(0)
    before = torch.get_rng_state()
    stream = InfiniteLoader(_Items(6), 2, seed=1)
    _take(stream, 7)  # three epochs, three iterators
    stream.load_state_dict(stream.state_dict())
    _take(stream, 1)  # a fourth, as a resumed stream makes
    assert [int(b["index"]) for b in build_eval_loader(_WithBadItems(2))] == [0, 1]
    assert torch.equal(torch.get_rng_state(), before)


def test_worker_seeds_are_a_function_of_the_stream_and_epoch() -> None:
    seeds = []
    for _ in range(2):
        stream = InfiniteLoader(_Items(4), 2, seed=1)
        _take(stream, 3)  # into epoch 1
        seeds.append(stream._iterator._base_seed)  # what its worker processes are seeded from
    other = InfiniteLoader(_Items(4), 2, seed=2)
    _take(other, 3)
    assert seeds[0] == seeds[1] != other._iterator._base_seed


class _MixedSizes(_Items):
    """Images of two sizes, kept as they are (no resize, no crop)."""

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        size = (8, 12) if index % 2 else (6, 10)
        return {"image": torch.zeros(3, *size), "name": f"img_{index}"}


@pytest.mark.parametrize("workers", [0, 1])
def test_images_of_one_batch_that_differ_in_size_are_one_line_naming_two_and_the_keys(
    workers: int,
) -> None:
    # before: PyTorch's collate raised "Trying to resize storage that is not resizable" from a
    # worker, a traceback that named no image and no setting
    from spcl.base import DatasetError

    for on_error in ("fail", "skip"):  # not a bad file: skipping does not hide it
        stream = InfiniteLoader(
            _MixedSizes(4), 2, seed=0, shuffle=False, num_workers=workers, on_error=on_error
        )
        with pytest.raises(DatasetError) as error:
            next(stream)
        assert str(error.value).startswith(
            "images of one batch differ in size: 'img_0' is 10x6 and 'img_1' is 12x8"
        )
        assert "data.source.size" in str(error.value) and "online.crop" in str(error.value)
    assert next(InfiniteLoader(_MixedSizes(4), 1, seed=0))["image"].shape[0] == 1  # one a batch
