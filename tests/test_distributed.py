"""Data-parallel training: 2 CPU processes with gloo train one model; its checkpoint loads."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from robustact.data import BatchLoader, load_dataset
from robustact.distributed import free_port
from robustact.errors import ConfigError
from robustact.train import TrainConfig, load_model, train
from robustact.train.checkpoint import load_checkpoint


def _worker(rank: int, port: int, out: str, results: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    config = TrainConfig(model="small_cnn", dataset="fashion_mnist", epochs=2, batch_size=64,
                         lr=0.05, schedule="onecycle", train_subset=1024, test_subset=256,
                         device="cpu", out=out, progress=False, seed=1)
    logs: list[str] = []
    result = train(config, log=logs.append)
    state = {k: v for k, v in result.model.state_dict().items() if v.is_floating_point()}
    torch.save({"state": state, "logs": logs, "history": result.history},
               Path(results) / f"rank{rank}.pt")


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    mp.spawn(_worker, args=(free_port(), str(out), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key, value in r0["state"].items():  # one model: identical weights in both processes
        assert torch.equal(value, r1["state"][key]), key
    assert len(r0["logs"]) == 2 and r1["logs"] == []  # rank 0 alone logs and writes
    timing = {"seconds", "images_per_s"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in r0["history"]] == [
        {k: v for k, v in row.items() if k not in timing} for row in r1["history"]]
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 1
    model, config = load_model(out)
    for key, value in model.state_dict().items():
        if key in r0["state"]:
            assert torch.equal(value, r0["state"][key]), key
    test = BatchLoader(load_dataset("fashion_mnist", "test").subset(256), batch_size=256)
    x, y = next(iter(test))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.5  # it learned (10 classes)
    # each epoch saw the 1024 images once over both processes
    assert r0["history"][-1]["train_acc"] > 0.3


def test_shards_are_disjoint_and_cover_the_data() -> None:
    data = load_dataset("fashion_mnist", "test").subset(101)
    full = torch.cat([y for _, y in BatchLoader(data, batch_size=16, shuffle=True, seed=2)])
    shards = [torch.cat([y for _, y in BatchLoader(data, batch_size=16, shuffle=True, seed=2,
                                                   rank=r, world_size=2)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 51
    assert torch.equal(shards[0], full[0::2]) and torch.equal(shards[1][:50], full[1::2])
    assert shards[1][50] == full[0]  # padded by repeating the head, like DistributedSampler


def test_batch_must_split_over_processes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    from robustact import distributed

    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    config = TrainConfig(model="small_cnn", dataset="fashion_mnist", epochs=1, batch_size=64,
                         train_subset=256, device="cpu", out=str(tmp_path), progress=False)
    try:
        train(config)
    except ConfigError as exc:
        assert "multiple of 3" in str(exc)
    else:
        raise AssertionError("batch 64 over 3 processes must be refused")
