"""Sharded SVGD over 2 gloo processes equals the single-process run."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors():
    g = torch.Generator().manual_seed(0)
    n = 7
    xs = [torch.randn(n, 13, generator=g), torch.randn(n, 3, 5, generator=g) * 2, torch.randn(n, 37, generator=g)]
    ss = [torch.randn(x.shape, generator=g) for x in xs]
    return xs, ss


def _worker(rank, world, port, out, bandwidth):
    from fastbayes.svgd import SVGD, sharded_direction

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    xs, ss = _tensors()
    mine = [0, 2] if rank == 0 else [1]           # rank 0 holds tensors 0 and 2, rank 1 tensor 1
    phis, h = sharded_direction([xs[i] for i in mine], [ss[i] for i in mine], bandwidth)
    # one optimiser step with SVGD(sharded=True): the particles move by lr·φ (SGD)
    params = [torch.nn.Parameter(xs[i].clone()) for i in mine]
    for p, i in zip(params, mine):
        p.grad = -ss[i].clone()
    opt = SVGD(params, torch.optim.SGD, bandwidth, sharded=True, lr=0.1)
    opt.step()
    # numpy copies: tensors would travel through shared memory that dies with this process
    out.put((rank, mine, [p.numpy().copy() for p in phis], float(h), [p.detach().numpy().copy() for p in params]))
    out.close()
    out.join_thread()                # the result is in the pipe before this process goes
    dist.destroy_process_group()
    os._exit(0)                      # skip the interpreter teardown where gloo aborts ~1 exit in 6 (tests/test_ddp.py)


@pytest.mark.parametrize("bandwidth", [None, 3.0])
def test_sharded_equals_single_process(bandwidth):
    from fastbayes.ops.svgd import direction_and_bandwidth

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, out, bandwidth)) for r in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in range(2)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    xs, ss = _tensors()
    want, h_want = direction_and_bandwidth(xs, ss, bandwidth)
    for rank, mine, phis, h, params in results:
        assert h == pytest.approx(float(h_want), rel=1e-6)   # the cpu kernel forms distances in float32
        for i, phi, p in zip(mine, map(torch.from_numpy, phis), map(torch.from_numpy, params)):
            torch.testing.assert_close(phi, want[i], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(p, xs[i] + 0.1 * want[i], rtol=1e-6, atol=1e-6)


def _nccl_worker(port, out):
    from fastbayes.svgd import sharded_direction

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1)
    xs, ss = _tensors()
    phis, h = sharded_direction([x.cuda() for x in xs], [s.cuda() for s in ss], None)
    out.put(([p.cpu().numpy().copy() for p in phis], float(h)))
    out.close()
    out.join_thread()
    dist.destroy_process_group()
    os._exit(0)


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA and NCCL")
def test_sharded_over_nccl_equals_direct():
    """The sharded path's all-reduce over NCCL (one rank per GPU: one rank on a one-GPU machine) gives the direct φ."""
    from fastbayes.ops.svgd import direction_and_bandwidth

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_nccl_worker, args=(_free_port(), out))
    p.start()
    phis, h = out.get(timeout=240)
    p.join(timeout=60)
    assert p.exitcode == 0
    xs, ss = _tensors()
    want, h_want = direction_and_bandwidth([x.cuda() for x in xs], [s.cuda() for s in ss], None)
    assert h == pytest.approx(float(h_want), rel=1e-6)
    for phi, w in zip(map(torch.from_numpy, phis), want):
        torch.testing.assert_close(phi, w.cpu(), rtol=1e-6, atol=1e-6)
