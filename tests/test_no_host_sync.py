"""No device-to-host read on the default path of any op (forward and backward).

A GPU synchronises when the host reads a device value: .item(), bool()/int()/float() of a tensor, .tolist(),
.cpu()/.numpy(), nonzero(). Without a GPU, two checks stand in for torch.cuda.set_sync_debug_mode("error") (which
tests/test_gpu.py uses on a GPU):
  * real CPU tensors on every backend: a dispatch mode records the aten ops a call dispatches and fails on the
    host-read ones, and the Tensor methods that read values fail when called from outside the Triton interpreter
    (which simulates the device on the host);
  * fake CUDA tensors (FakeTensorMode): the code path a GPU takes, in which any value read is an error.
On CPU tensors the checks of the levels and ids are host reads by design (there is no device to wait for): the
C++ kernels do them without dispatching anything, the Triton and PyTorch backends in _validate.check_sigmas /
check_sample_ids, which are the only host reads allowed here, and only of CPU tensors.
"""
from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import ambient_fast

aten = torch.ops.aten
HOST_READ_OPS = {aten._local_scalar_dense, aten.item, aten.nonzero, aten.equal, aten.is_nonzero, aten.allclose}
HOST_READ_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostReads(TorchDispatchMode):
    """Records every aten op; collects the ones that read a value on the host or copy a tensor to the CPU."""

    def __init__(self):
        super().__init__()
        self.ops, self.reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(func)
        if func.overloadpacket in HOST_READ_OPS:
            self.reads.append(str(func))
        if func.overloadpacket in (aten._to_copy, aten.copy_):
            source = args[1] if func.overloadpacket is aten.copy_ else args[0]
            target = kwargs.get("device", args[0].device if func.overloadpacket is aten.copy_ else source.device)
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and torch.device(target).type == "cpu":
                self.reads.append(f"{func} from {source.device}")
        return func(*args, **kwargs)


CPU_LEVEL_CHECKS = {"check_sigmas", "check_sample_ids"}


def _allowed(tensor: torch.Tensor) -> bool:
    """Reads by Triton's interpreter (it simulates the device on the host), and the level checks of CPU tensors."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/site-packages/triton/" in path:
            return True
        if path.endswith("ambient_fast/_validate.py") and frame.f_code.co_name in CPU_LEVEL_CHECKS:
            return tensor.device.type == "cpu"
        frame = frame.f_back
    return False


@contextlib.contextmanager
def no_host_reads():
    """Fail on any host read of a tensor value inside the block (the exceptions of _allowed aside)."""
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READ_METHODS}

    def guarded(name):
        def method(self, *args, **kwargs):
            if not _allowed(self):
                reads.append(f"Tensor.{name}")
            return originals[name](self, *args, **kwargs)

        return method

    recorder = HostReads()
    try:
        for name in HOST_READ_METHODS:
            setattr(torch.Tensor, name, guarded(name))
        with recorder:
            yield recorder
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    assert not reads + recorder.reads, f"host reads on the default path: {reads + recorder.reads}"


def _inputs(device="cpu", generator=None):
    generator = generator or torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 5, 6, generator=generator).to(device)
    ids = torch.tensor([1, 7, 2**33], device=device)
    sigma_t = torch.tensor([0.5, 1.0, 3.0], device=device)
    sigma_tn = torch.tensor([0.0, 0.4, 2.5], device=device)
    return x0, ids, sigma_t, sigma_tn


def one_training_step(x0, ids, sigma_t, sigma_tn, validate, *, backward=True):
    """What a training step does with the ops, default arguments except `validate`."""
    weight = torch.ones(1, x0.shape[1], 1, 1, device=x0.device, requires_grad=backward)
    x_t, x_tn = ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=3, validate=validate)
    raw = weight * x_t
    loss = ambient_fast.ambient_loss_precond(raw, x_t, x_tn, sigma_t, sigma_tn, reduction="mean", validate=validate)
    logvar = weight.sum() + torch.zeros(x0.shape[0], device=x0.device)
    loss = loss + ambient_fast.ambient_loss(raw, x_t, x_tn, sigma_t, 0.0, logvar=logvar, validate=validate).sum()
    loss = loss + ambient_fast.add_noise(raw, sigma_t, sigma_tn, validate=validate).mean()
    loss = loss + (ambient_fast.sample_noise(ids, x0.shape[1:], seed=2) * raw).mean()
    if not backward:
        return loss
    loss.backward()
    return weight.grad


def test_the_cpu_default_path_reads_nothing():
    """The default backend on a CPU (the C++ extension): levels are checked inside the kernels."""
    if ambient_fast.backends()["ambient_loss"] != "cpp":
        pytest.skip("the C++ extension is not built")
    inputs = _inputs()
    with no_host_reads() as recorder:
        grad = one_training_step(*inputs, validate=None)
    assert torch.isfinite(grad).all()
    names = {str(op) for op in recorder.ops}
    assert {"ambient_fast.ambient_loss_fwd.default", "ambient_fast.ambient_noising.default",
            "ambient_fast.add_noise.default", "ambient_fast.sample_noise.default"} <= names


def test_every_backend_reads_nothing_but_the_cpu_level_checks(backend):
    inputs = _inputs()
    with no_host_reads():
        grad = one_training_step(*inputs, validate=None)
    assert torch.isfinite(grad).all()


def test_the_reduced_loss_backward_reads_nothing(backend):
    """The fast path of backward (incoming gradient 1: return the stored gradient) is decided without a read."""
    x0, _, sigma_t, sigma_tn = _inputs()
    for incoming in (1.0, 0.25):
        prediction = torch.randn(x0.shape, requires_grad=True)
        loss = ambient_fast.ambient_loss(prediction, x0, x0 * 0.5, sigma_t, sigma_tn, reduction="mean", validate=False)
        with no_host_reads():
            (loss * incoming).backward()
        expected = torch.autograd.grad(
            ambient_fast.reference.ambient_loss_reference(prediction, x0, x0 * 0.5, sigma_t, sigma_tn).mean() * incoming,
            prediction,
        )[0]
        torch.testing.assert_close(prediction.grad, expected, rtol=1e-5, atol=1e-7)


def test_the_gpu_path_reads_nothing():
    """Fake CUDA tensors take the GPU code path (Triton operators, device-side checks, seeds drawn on the device)
    without a GPU; reading a fake value raises, and a copy to the CPU is recorded. Forward only: autograd on a
    fake CUDA tensor needs a CUDA build; the backward is the same code on every device (checked above on CPU
    tensors, and under torch.cuda.set_sync_debug_mode("error") by tests/test_gpu.py)."""
    with FakeTensorMode(allow_non_fake_inputs=False):
        x0, ids, sigma_t, sigma_tn = (torch.empty_like(t, device="cuda") for t in _inputs())
        assert x0.device.type == "cuda"
        with no_host_reads() as recorder:
            loss = one_training_step(x0, ids, sigma_t, sigma_tn, validate=None, backward=False)
    assert loss.device.type == "cuda"
    names = {str(op) for op in recorder.ops}
    assert {"ambient_fast.ambient_loss_triton.default", "ambient_fast.ambient_noising_triton.default",
            "ambient_fast.add_noise_triton.default"} <= names


def test_a_trainer_step_between_log_intervals_reads_nothing(monkeypatch, tmp_path):
    """The trainer's step (noising, network, loss, backward, the non-finite check, masked Adam, EMA, the loss kept
    on the device) reads nothing back; the losses and flags are read only at log, checkpoint and stop steps
    (log_every=4, checkpoint_every=6, total 8 steps: flushes after steps 0, 4, 5, 7)."""
    from test_train import smooth_images, tiny_config

    from ambient_fast.data import TensorDataset
    from ambient_fast.train import loop, train

    stepped, flushed = [], []
    step_call, flush_call = loop.Stepper.__call__, loop.Stepper.flush

    def guarded_step(self, step, batch):
        with no_host_reads():
            step_call(self, step, batch)
        stepped.append(step)

    def recorded_flush(self):
        flushed.append(stepped[-1])
        return flush_call(self)

    monkeypatch.setattr(loop.Stepper, "__call__", guarded_step)
    monkeypatch.setattr(loop.Stepper, "flush", recorded_flush)
    config = tiny_config(total_steps=8, log_every=4, checkpoint_every=6, snapshot_every=0)
    result = train(config, run_dir=tmp_path, dataset=TensorDataset(smooth_images(16)), log=lambda *_: None)
    assert stepped == list(range(8)) and flushed == [0, 4, 5, 7] and len(result["losses"]) == 8


@pytest.mark.parametrize("arch", ["unet", "edm2", "dit"])
def test_class_conditional_networks_read_no_label_on_the_host(arch):
    """Integer class labels become one-hot vectors inside the graph: F.one_hot reads the labels' min and max on the
    host (on a CPU) to check them, a sync per step of every class-conditional run."""
    from ambient_fast.networks.labels import label_vectors

    torch.manual_seed(0)
    labels = torch.randint(0, 5, (4,))
    if arch == "unet":
        from ambient_fast.networks.unet import UNet
        network = UNet(3, 8, model_channels=8, channel_mult=(1,), num_blocks=1, label_dim=5)
    elif arch == "edm2":
        from ambient_fast.networks.edm2 import EDM2UNet
        network = EDM2UNet(3, 8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(), label_dim=5)
    else:
        from ambient_fast.networks.dit import DiT
        network = DiT(3, 8, size="dit-tiny", label_dim=5)
    with torch.no_grad():  # no zero-initialised layer: the labels reach the output
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    network.eval()  # EDM2 re-normalises its weights in place on each training-mode forward
    x, c_noise = torch.randn(4, 3, 8, 8), torch.randn(4)
    with no_host_reads():
        out = network(x, c_noise, labels)
    # the integer labels give exactly what their one-hot vectors give
    torch.testing.assert_close(out, network(x, c_noise, label_vectors(labels, 5, dtype=torch.float32)), rtol=0, atol=0)
    assert torch.equal(label_vectors(labels, 5, dtype=torch.float64),
                       torch.nn.functional.one_hot(labels, 5).double())
