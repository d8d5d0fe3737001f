"""The pseudo-label stage under torchrun: each rank writes its shard of labels into one shared
``labels.partial`` folder, and only rank 0 may clear it (a rank that cleared it could delete labels
another rank had already written: the CI failure of 2026-11-25).

Ranks are simulated in one process (no process group: reductions and barriers are no-ops), with
the rank and world size of the run context set by hand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from spcl.config import load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair, image_name
from spcl.pipeline import run_pipeline
from spcl.stages import pseudo_labels
from tiny import TINY

N_TRAIN = 4


def test_only_rank_zero_clears_the_shared_partial_folder(tmp_path: Path) -> None:
    data = generate_pair(
        tmp_path / "data", seed=3, n_train=N_TRAIN, n_val=1, size=(64, 128), progress=False
    )
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    config = load_config(
        "demo", [*TINY, *roots, "run.stages=[warmup]", f"run.out={tmp_path / 'run'}"]
    )
    with open_run(config) as ctx:
        weights = run_pipeline(ctx)["warmup"]
        out_dir = tmp_path / "labels_stage"
        partial = out_dir / "labels.partial"
        partial.mkdir(parents=True)
        written_by_rank_0 = partial / f"{image_name('target', 'train', 0)}.png"
        written_by_rank_0.write_bytes(b"rank 0's label")

        rank_1 = dataclasses.replace(ctx, rank=1, world=2)
        pseudo_labels.run(rank_1, out_dir, {"warmup": weights})
        assert written_by_rank_0.read_bytes() == b"rank 0's label"  # not deleted by rank 1
        odd = {f"{image_name('target', 'train', i)}.png" for i in range(1, N_TRAIN, 2)}
        assert odd <= {p.name for p in partial.iterdir()}  # rank 1 wrote its shard
        assert not (out_dir / "labels").exists()  # only rank 0 moves the folder into place

        pseudo_labels.run(
            ctx, out_dir, {"warmup": weights}
        )  # rank 0 of 1: a fresh folder, then the rename
        labels = sorted(p.name for p in (out_dir / "labels").iterdir())
        assert labels == [f"{image_name('target', 'train', i)}.png" for i in range(N_TRAIN)]
        assert (out_dir / "labels" / written_by_rank_0.name).read_bytes() != b"rank 0's label"
        assert not partial.exists()
