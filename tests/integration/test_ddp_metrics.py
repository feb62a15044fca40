"""The metric suite under real DDP: two gloo processes over halves of a set (plus the padding
repeat that Lightning's DistributedSampler adds) give the values of one process over the set."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# Every metric that resolves here with no download, with backends that answer on any image.
SUITE = {
    "l1": {},
    "psnr": {},
    "ssim": {},
    "fid": {},
    "akd": {"backend": "animzoo70"},
    "csim": {"backend": "animzoo"},
}


def _frames(n: int = 12, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[int]]:
    g = torch.Generator().manual_seed(0)
    target = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)
    prediction = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    source = target[[0] * 6 + [6] * 6]
    ids = ["a"] * 6 + ["b"] * 6
    index = list(range(6)) * 2
    return prediction, target, source, ids, index


def _evaluate(shards: list[list[int]]) -> dict[str, float]:
    from animzoo.metrics import AnimationMetrics

    torch.set_num_threads(1)
    prediction, target, source, ids, index = _frames()
    metrics = AnimationMetrics(metrics=list(SUITE), metric_kwargs=SUITE)
    for shard in shards:
        metrics.update(prediction[shard], target[shard], [ids[i] for i in shard],
                       torch.tensor([index[i] for i in shard]), source=source[shard])
    return {k: float(v) for k, v in metrics.compute().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # Rank 0 gets the first half in two chunks, rank 1 the second half plus a repeat of the
        # first chunk (the padding of a DistributedSampler); compute() syncs over both ranks.
        shards = [[0, 1, 2, 3, 4, 5], [6, 7, 8]] if rank == 0 else [[9, 10, 11], [0, 1, 2]]
        result = _evaluate(shards)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups over TCP on Linux/macOS")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    distributed = json.loads(out.read_text())
    single = _evaluate([list(range(12))])
    assert set(distributed) == set(single)
    for key in ("l1", "psnr", "ssim", "fid@inception-pt", "akd@animzoo70", "csim@animzoo"):
        assert key in single, sorted(single)
    for key, value in single.items():
        assert math.isfinite(value), (key, value)
        assert distributed[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
