"""Small collectives put their tensor where the backend reduces it (CUDA under NCCL, CPU under
gloo), and are the same answers without a process group."""

import pytest
import torch

from ard_scale.distributed.collectives import all_ranks, any_rank, collective_device, sum_over_ranks


def test_gloo_and_no_group_reduce_on_cpu():
    assert collective_device("gloo") == torch.device("cpu")
    assert collective_device(None) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to name the current device")
def test_nccl_reduces_on_the_current_cuda_device():
    assert collective_device("nccl") == torch.device("cuda", torch.cuda.current_device())
    assert collective_device("NCCL").type == "cuda"


def test_nccl_never_answers_cpu_even_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # no GPU here: the choice itself is what's tested
    assert collective_device("nccl") == torch.device("cuda", 0)


def test_single_process_answers():
    assert any_rank(True) and not any_rank(False)
    assert all_ranks(True) and not all_ranks(False)
    assert sum_over_ranks({"b": 2, "a": 3}) == {"a": 3, "b": 2}
