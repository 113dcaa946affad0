"""--device: selection, and the transfer path (pin on the read-ahead thread, upload, result back) that CUDA
takes, run here with a CPU stand-in for the pinning; the real CUDA comparison runs where a GPU is."""
import pytest
import torch
from test_merge_api import small_model

from merge_core.engine import stream
from merge_core.api import open_source, plan_merge
from merge_core.device import Transfer, math_device, resolve_device
from merge_core.engine import DictSink, run_merge
from merge_core.errors import MergeInputError


def test_auto_is_cuda_only_when_present_and_cuda_without_gpu_is_an_error():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MergeInputError, match="device.*auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MergeInputError, match="no CUDA device"):
            resolve_device("cuda")


def merge(a, b, device, calcmode="normal", transfer=None, monkeypatch=None):
    sources = {"a": open_source(a, "A"), "b": open_source(b, "B")}
    plan = plan_merge(sources, "Weight sum", 0.3, calcmode=calcmode)
    if transfer is not None:
        monkeypatch.setattr(stream, "Transfer", transfer)
    return run_merge(plan, sources, DictSink(), None, device=device), plan


class Recording(Transfer):
    """The CUDA code path on the CPU: 'pinning' is a copy made on the read-ahead thread, flagged."""
    seen: list = []

    def __init__(self, device):
        super().__init__(device)
        self.pin = True

    def prepare(self, tensor):
        if tensor is None:
            return None
        out = tensor.clone()
        out.prepared = True
        return out

    def inputs(self, *tensors):
        assert all(t is None or getattr(t, "prepared", False) for t in tensors)
        Recording.seen.append(len(tensors))
        return super().inputs(*tensors)


@pytest.mark.parametrize("calcmode", ["normal", "cosineA", "plus random"])
def test_transfer_path_gives_the_plain_cpu_result(sd1_keys, monkeypatch, calcmode):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    plain, plan = merge(a, b, "cpu", calcmode)
    Recording.seen = []
    moved, _ = merge(a, b, "cpu", calcmode, Recording, monkeypatch)
    assert len(Recording.seen) >= len(plan.merged())
    for key, value in plain.items():
        assert torch.equal(moved[key], value), key


def test_plus_random_stays_on_the_cpu():
    class Calc:
        name = "plus random"

    class Settings:
        calc = Calc()
    assert math_device(torch.device("cuda"), Settings()).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("calcmode", ["normal", "cosineA", "tensor"])
def test_cuda_equals_cpu_within_float32_rounding(sd1_keys, calcmode):
    a, b = small_model(sd1_keys, 1, torch.float32), small_model(sd1_keys, 2, torch.float32)
    cpu, _ = merge(a, b, "cpu", calcmode)
    gpu, _ = merge(a, b, "cuda", calcmode)
    for key, value in cpu.items():
        assert gpu[key].device.type == "cpu"
        torch.testing.assert_close(gpu[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("calcmode", ["normal", "trainDifference"])
def test_cuda_result_beyond_the_output_dtype_is_refused_like_on_the_cpu(tmp_path, sd1_keys, calcmode):
    """The result check runs where the math runs: on the GPU, a finite fp16 pair merged at alpha 1000 stops
    with the error naming the key, and nothing is written."""
    from safetensors.torch import save_file

    from merge_core.api import merge_files
    from merge_core.nonfinite import NonFiniteResult
    a = {k: torch.zeros_like(v) if v.is_floating_point() else v
         for k, v in small_model(sd1_keys, 1, torch.float16).items()}
    b = {k: torch.full_like(v, 100.0) if v.is_floating_point() else v for k, v in a.items()}
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    save_file(a, paths[0])
    save_file(b, paths[1])
    out = tmp_path / "o.safetensors"
    with pytest.raises(NonFiniteResult, match="at key '.*inputs there are finite"):
        merge_files(str(paths[0]), str(paths[1]), str(paths[0]), str(out), mode="Add difference", alpha=1000.0,
                    calcmode=calcmode, device="cuda")
    assert not out.exists() and sorted(tmp_path.iterdir()) == sorted(paths)
    merge_files(str(paths[0]), str(paths[1]), None, str(out), mode="Weight sum", alpha=0.5, device="cuda")
    assert out.exists()
