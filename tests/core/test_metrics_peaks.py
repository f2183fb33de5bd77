"""The MFU peak table: each GPU users rent maps to its datasheet dense bf16 figure by the exact
string `torch.cuda.get_device_name()` reports, and anything else gets no MFU, warned once."""
from __future__ import annotations

import warnings

import pytest

from wikigpt_core.train import metrics
from wikigpt_core.train.metrics import GPU_PEAKS, gpu_peak, gpu_peak_flops

# (device name as CUDA reports it, dense bf16 TFLOP/s)
RENTED = [
    ("NVIDIA GeForce RTX 3090", 71.0),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 5090", 209.5),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA A10G", 125.0),
    ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA B200", 2250.0),
]

# Other silicon whose name contains a known one: a substring match would give a wrong MFU.
LOOKALIKES = ["NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 4090 Laptop GPU",
              "NVIDIA GH200 480GB", "NVIDIA L40", "NVIDIA A10", "NVIDIA H800", "Tesla T4"]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(metrics, "_unknown_gpus", set())


@pytest.mark.parametrize("name,tflops", RENTED)
def test_rented_gpu_maps_to_its_datasheet_figure(name, tflops):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known GPU never warns
        assert gpu_peak_flops(name) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name,_", RENTED)
def test_each_rented_name_matches_exactly_one_entry(name, _):
    import re

    hits = [p for p in GPU_PEAKS if re.search(p.pattern, name, re.IGNORECASE)]
    assert len(hits) == 1, [p.pattern for p in hits]


def test_every_entry_names_its_source():
    assert all(p.source.startswith("NVIDIA") and p.tflops > 0 for p in GPU_PEAKS)
    rented = {gpu_peak(name) for name, _ in RENTED}
    assert rented == set(GPU_PEAKS)  # no entry is dead weight


@pytest.mark.parametrize("name", LOOKALIKES)
def test_unknown_gpu_has_no_mfu(name):
    with pytest.warns(RuntimeWarning, match=f"MFU unknown for {name}"):
        assert gpu_peak_flops(name) is None


def test_unknown_gpu_is_warned_once_per_name():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            gpu_peak_flops("Tesla T4")
            gpu_peak_flops("NVIDIA H800")
    assert sorted(str(w.message).split(":")[0] for w in seen) == ["MFU unknown for NVIDIA H800",
                                                                   "MFU unknown for Tesla T4"]
