"""torchrun on CPU (gloo): every model family, both online inits, kill -9 of a job, two "nodes".

Three launches (each pays torch's start-up once; tests/torchrun_job.py runs several commands):

1. ``--nproc_per_node 2``: the SPCL chain then the online stage (DeepLab, ``online.init: warmup``),
   and the online stage of a DeepLab, a MiT and a DINOv2 model from ``online.init: pretrained``
   (their random init: the ranks start from different weights before DDP hands rank 0's to every
   student) and, for MiT and DINOv2, from ``warmup``; and HRDA's two-scale MiT (``online.hrda``,
   each rank drawing its own detail windows) from ``warmup``; and a DeepLab and a MiT model with
   MIC's masking, once with per-pass backward (each pass under DDP's ``no_sync``, the gradients
   averaged once a step) and once joint, whose weights must agree. The EMA teachers must be
   identical on every rank at every checkpoint (the stage checks it at each one; the ranks' final
   teachers are compared here too).
2. Two "nodes" on this machine (two launchers, ``--nnodes 2``, a c10d rendezvous on 127.0.0.1):
   the MiT run from ``pretrained`` again, the whole job killed with SIGKILL (launchers and ranks)
   while its second checkpoint is written.
3. The same two-node command again: it resumes from the first checkpoint and finishes, with
   weights bit-identical to the uninterrupted run of launch 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from official_layouts import dinov2_layout, random_tensors, save_state
from spcl.data.synthetic import generate_pair

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("torchrun_job.py")
FAMILIES = {"deeplab": "deeplabv2_resnet18", "mit": "daformer_mit_b0", "dinov2": "dinov2_vits14"}
HRDA = ("online.hrda.enabled=true", "online.hrda.detail_crop=[32,64]")  # each rank's windows
INITS = {
    "pretrained": ("online.init=pretrained", "run.stages=[online]"),
    "warmup": ("online.init=warmup", "run.stages=[warmup, online]"),
}
STEPS = 4  # online steps, a checkpoint after each
TIMEOUT = 600  # seconds for one launch


def _common(data: Path) -> list[str]:
    return [
        *(f"data.{d}.root={data}" for d in ("source", "target", "target_val")),
        "data.synthetic.generate=false",
        "data.num_workers=0",
        "run.device=cpu",
        "run.progress=false",
        "model.width=8",
        "warmup.adversarial=false",
        "warmup.optim.max_iter=2",
        "warmup.optim.stop_iter=2",
        "warmup.optim.batch_size=2",
        f"online.optim.max_iter={STEPS}",
        f"online.optim.stop_iter={STEPS}",
        "online.optim.batch_size=2",
        "online.contrast.start_iter=2",
        "run.ckpt_every=1",
        "run.log_every=2",
    ]


def _online(data: Path, out: Path, family: str, init: str, *extra: str) -> list[str]:
    model = [f"model.name={FAMILIES[family]}"]
    return ["run", "demo", *_common(data), *model, *INITS[init], *extra, f"run.out={out}"]


def _spcl_chain(data: Path, out: Path) -> list[str]:
    """The SPCL chain and the online stage from the warm-up, contrast and masking on."""
    stages = (
        "[warmup, prototypes, pseudo_labels, adapt, pseudo_labels_2, self_train, online, evaluate]"
    )
    return [
        "run",
        "demo",
        *_common(data),
        f"run.stages={stages}",
        "online.init=warmup",
        "online.masking.enabled=true",
        "online.contrast.source=true",
        "online.contrast.target=true",
        "adapt.optim.max_iter=2",
        "adapt.optim.stop_iter=2",
        "adapt.optim.batch_size=2",
        "self_train.optim.max_iter=2",
        "self_train.optim.stop_iter=2",
        "self_train.optim.batch_size=2",
        "self_train.crop=[64, 128]",
        f"run.out={out}",
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launch(
    tmp: Path, name: str, commands: list[list[str]], *, nodes: int, kill: tuple[str, int] | None
) -> int:
    """Run ``commands`` in one torchrun job of 2 processes (one node of 2, or 2 nodes of 1)."""
    pids = tmp / f"{name}.pids"
    pids.mkdir()
    job = tmp / f"{name}.json"
    job.write_text(json.dumps({"commands": commands, "pids": str(pids), "kill": kill}))
    runner = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        launchers = [[*runner, "--standalone", "--nproc_per_node", "2"]]
    else:
        endpoint = f"127.0.0.1:{_free_port()}"
        rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", name]
        launchers = [
            [
                *runner,
                "--nnodes",
                "2",
                "--node_rank",
                str(node),
                "--nproc_per_node",
                "1",
                *rendezvous,
            ]
            for node in range(nodes)
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(JOB.parent), env.get("PYTHONPATH", "")])
    logs = [(tmp / f"{name}.{node}.log").open("w") for node in range(len(launchers))]
    processes = [
        subprocess.Popen(
            [*command, str(JOB), str(job)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a job of its own, as a scheduler starts it
        )
        for command, log in zip(launchers, logs, strict=True)
    ]
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in processes]
    finally:
        if any(p.poll() is None for p in processes):
            _kill_hung_job(pids, processes)
        for log in logs:
            log.close()
    if kill is None and any(codes):
        text = "\n".join(log.read_text()[-3000:] for log in tmp.glob(f"{name}.*.log"))
        pytest.fail(f"torchrun job {name} failed ({codes}):\n{text}")
    return codes[0]


def _kill_hung_job(pids: Path, launchers: list[subprocess.Popen]) -> None:
    """SIGKILL the ranks (each in a session of its own) and the launchers of a job that hangs."""
    for record in pids.glob("rank*.json"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(json.loads(record.read_text())["rank"], signal.SIGKILL)
    for launcher in launchers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _ranks_agree(stage: Path) -> None:
    """Both ranks' final teachers equal each other and the saved teacher.pth, tensor for tensor."""
    saved = _weights(stage / "teacher.pth")
    for rank in (0, 1):
        held = torch.load(stage / f"teacher.rank{rank}.pt", weights_only=True)
        assert held.keys() == saved.keys()
        for key in saved:
            assert torch.equal(held[key], saved[key]), f"{stage}: rank {rank} {key}"


def _checked_every_step(log: str, out: Path) -> None:
    for step in range(1, STEPS + 1):
        assert f"[online] iteration {step}: teachers of 2 ranks: max difference 0\n" in log, out


def test_every_family_and_init_on_two_ranks_then_kill_9_and_resume_on_two_nodes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    generate_pair(data, seed=3, n_train=8, n_val=2, size=(64, 128), preview=False, progress=False)
    runs = {
        (family, init): tmp_path / f"{family}_{init}"
        for family in FAMILIES
        for init in INITS
        if (family, init) != ("deeplab", "warmup")  # the chain's online stage is that case
    }
    chain = tmp_path / "chain"
    commands = [_spcl_chain(data, chain)]
    commands += [_online(data, out, family, init) for (family, init), out in runs.items()]
    hrda = tmp_path / "mit_hrda_warmup"  # HRDA's two-scale MiT from the one-scale warm-up
    commands.append(_online(data, hrda, "mit", "warmup", *HRDA))
    runs[("mit_hrda", "warmup")] = hrda
    per_pass = {  # each pass backpropagated under no_sync, the gradients reduced once a step
        family: tmp_path / f"{family}_pretrained_per_pass" for family in ("deeplab", "mit")
    }
    masked = ("online.masking.enabled=true", "online.backward=per_pass")  # three passes
    commands += [_online(data, out, f, "pretrained", *masked) for f, out in per_pass.items()]
    commands += [_online(data, out.with_name(f"{f}_joint"), f, "pretrained", masked[0])
                 for f, out in per_pass.items()]  # fmt: skip
    _launch(tmp_path, "one_node", commands, nodes=1, kill=None)

    chain_log = (chain / "log.txt").read_text()
    assert "prototype banks of 2 ranks: max difference 0" in chain_log
    _checked_every_step(chain_log, chain)
    _ranks_agree(chain / "07_online")
    summary = json.loads((chain / "08_evaluate" / "summary.json").read_text())
    assert set(summary) == {"warmup", "adapt", "self_train", "online"}  # each rank scored a share
    for out in runs.values():
        _checked_every_step((out / "log.txt").read_text(), out)
        _ranks_agree(out / "07_online")
        assert json.loads((out / "env.json").read_text())["world_size"] == 2

    for family, out in per_pass.items():  # the joint step's weights, up to rounding
        log = (out / "log.txt").read_text()
        assert "gradients averaged over 2 ranks once per iteration" in log
        _checked_every_step(log, out)
        _ranks_agree(out / "07_online")
        joint = out.with_name(f"{family}_joint") / "07_online"
        for name in ("student.pth", "teacher.pth"):
            a, b = _weights(joint / name), _weights(out / "07_online" / name)
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

    killed = tmp_path / "killed"
    command = _online(data, killed, "mit", "pretrained")
    stage = killed / "07_online"
    code = _launch(
        tmp_path, "nodes_killed", [command], nodes=2, kill=(f"{stage}/.checkpoint.pth", 2)
    )
    assert code == -signal.SIGKILL
    assert torch.load(stage / "checkpoint.pth", weights_only=True)["_loop"]["iteration"] == 1
    assert not (stage / "done.json").exists()
    _launch(tmp_path, "nodes_resumed", [command], nodes=2, kill=None)
    log = (killed / "log.txt").read_text()
    assert f"[online] resumed from {stage / 'checkpoint.pth'} at iteration 1" in log
    _checked_every_step(log, killed)
    _ranks_agree(stage)
    straight = runs[("mit", "pretrained")] / "07_online"
    for name in ("student.pth", "teacher.pth"):
        a, b = _weights(straight / name), _weights(stage / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after the resume"


def test_sepico_class_statistics_agree_across_two_ranks(tmp_path: Path) -> None:
    """SePiCo's cumulative statistics (BankCL: mean, variance and the bank) are all-reduced:
    both ranks hold the same ones after every step (checked before each checkpoint)."""
    data = tmp_path / "data"
    generate_pair(data, seed=3, n_train=8, n_val=2, size=(64, 128), preview=False, progress=False)
    out = tmp_path / "sepico"
    sepico = [
        "online.contrast.source=true",
        "online.contrast.target=true",
        "online.contrast.statistics=cumulative",
        "online.contrast.loss=bank",
        "online.contrast.memory_length=3",
        "online.contrast.labels=ratio",
        "online.contrast.regularizer=1.0",
        "online.contrast.augment_source=true",
    ]
    _launch(
        tmp_path, "sepico", [[*_online(data, out, "deeplab", "pretrained"), *sepico]], nodes=1,
        kill=None,
    )  # fmt: skip
    log = (out / "log.txt").read_text()
    _checked_every_step(log, out)
    for step in range(1, STEPS + 1):
        assert f"[online] iteration {step}: class statistics of 2 ranks: max difference 0\n" in log
    state = torch.load(out / "07_online" / "checkpoint.pth", weights_only=True)["statistics"]
    assert int(state["filled"].max()) == 3  # the ring is full: the last 3 of 4 batch means


def test_the_vfmudapp_step_and_its_distillation_head_agree_across_two_ranks(
    tmp_path: Path,
) -> None:
    """VFM-UDA++'s step (ViT-Adapter, strong source augmentation, flip-averaged labels, feature
    distillation): the student and its distillation head share one DDP wrapper, so both ranks
    hold the same head and teacher after every step (checked before each checkpoint)."""
    data = tmp_path / "data"
    generate_pair(data, seed=3, n_train=8, n_val=2, size=(64, 128), preview=False, progress=False)
    frozen = save_state(
        random_tensors(dinov2_layout("vits14", registers=True), seed=0),
        tmp_path / "dinov2_vits14_reg4_pretrain.pth",
    )
    out = tmp_path / "vfmudapp"
    command = ["run", "demo", *_common(data), *INITS["pretrained"], f"run.out={out}"]
    command += [
        "model.name=vfmudapp_vits14",
        "online.crop=[32, 32]",
        "online.source_augment=strong",
        "online.pseudo.flip_average=true",
        "online.masking.enabled=true",
        "online.masking.block_size=4",
        "online.optim.lr_batch_scaling=sqrt",
        "online.distill.weight_source=0.1",
        "online.distill.weight_target=0.1",
        "online.distill.model=dinov2_vits14_reg",
        "online.distill.input_size=28",
        f"online.distill.pretrained={frozen}",
    ]
    _launch(tmp_path, "vfmudapp", [command], nodes=1, kill=None)
    log = (out / "log.txt").read_text()
    _checked_every_step(log, out)
    for step in range(1, STEPS + 1):
        assert (
            f"[online] iteration {step}: distillation heads of 2 ranks: max difference 0\n" in log
        )
    _ranks_agree(out / "07_online")
