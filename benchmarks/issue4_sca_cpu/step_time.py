"""Median training-step time (forward + backward + Adam step) of the compared models, on one thread.

Same setting as the comparison: synthetic scenes' tasks (13 classes, depth, normals), 64x64,
width 0.125, batch 8. Usage: OMP_NUM_THREADS=1 python benchmarks/issue4_sca_cpu/step_time.py
"""

from __future__ import annotations

import statistics
import time

import torch

from densemtl.models import create_model
from densemtl.tasks import make_tasks, task_channels

MODELS = ("single_hrnet", "sca_mtl", "mtinet", "padnet", "split_hrnet", "mtan")


def step_time(name: str, steps: int = 7) -> float:
    tasks = make_tasks(["semantic", "depth", "normal"], num_classes=13)
    channels = task_channels(tasks)
    if name.startswith("single"):
        channels = {"semantic": 13}
    model = create_model(name, channels, width=0.125)
    optim = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.randn(8, 3, 64, 64)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(images)
        sum(o.float().mean() for o in out.values()).backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first steps warm up


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in MODELS:
        print(f"{name:14s} {1000 * step_time(name):7.1f} ms/step")
