"""Device selection and the CPU allocator tuning."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from robustact.device import select_device
from robustact.errors import ConfigError

# a child process runs forward+backward passes of a small network (the pattern of an attack or
# a training step: many activation-sized blocks freed and re-allocated) and prints its page faults
_FAULTS = """
import resource, sys, torch
from robustact.device import tune_cpu_allocator
from robustact.models import create_model
torch.set_num_threads(1)
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
model = create_model("small_cnn")
x = torch.rand(128, 1, 28, 28, requires_grad=True)
def step():
    torch.autograd.grad(model(x).logsumexp(1).sum(), x)
for _ in range(4):  # warm-up: the heap grows to its peak
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "ROBUSTACT_NO_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning is for glibc's malloc")
def test_tuned_allocator_reuses_freed_tensor_memory() -> None:
    tuned, faults_tuned = _faults("tune")
    _, faults_plain = _faults("plain")
    assert tuned == "True"
    # activations of small_cnn at batch 128: ~25 MB per pass, ~6000 pages. Tuned, the warm heap
    # is reused: measured 0-6300 faults over the 8 passes (a rare 3136-page block). Untuned,
    # glibc's dynamic mmap threshold decides, and that varies by machine: 0 faults on CI's,
    # 20000-160000 here, so it is compared only where it faulted.
    assert faults_tuned < 8 * 6000 / 6
    if faults_plain > 8 * 6000 / 2:
        assert faults_tuned < faults_plain / 3


def test_select_device() -> None:
    assert select_device("auto") == select_device(None)
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            select_device("cuda")
