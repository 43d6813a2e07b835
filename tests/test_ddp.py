"""A gated model trains under DistributedDataParallel (gloo, 2 CPU processes started by the test)."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    import torch.nn.functional as F

    import fastbayes as fb
    from models import MLP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLP((8, 16, 3))
    fb.add_gates(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    torch.manual_seed(100 + rank)          # different data and noise on each rank
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    loss = F.cross_entropy(ddp(x), y) + fb.kl_loss(model) / 1000
    loss.backward()
    grad = model.layers[0].fastbayes_gate.mu.grad.clone()
    opt.step()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered_g = [torch.zeros_like(grad) for _ in range(world)]
    gathered_p = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered_g, grad)
    dist.all_gather(gathered_p, params)
    if rank == 0:
        # numpy copies: tensors would travel through shared memory that dies with this process
        out.put((torch.stack(gathered_g).numpy().copy(), torch.stack(gathered_p).numpy().copy()))
        out.close()
        out.join_thread()            # the result is in the pipe before this process goes
    dist.destroy_process_group()
    # torch 2.13's gloo aborts ~1 exit in 6 ("terminate called without an active exception") while the interpreter
    # tears down, with or without fastbayes in the model and with a barrier first; skip that teardown
    os._exit(0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_gloo_two_processes():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    grads, params = map(torch.from_numpy, out.get(timeout=240))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)    # averaged gradients on both ranks
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)  # gate parameters stay in sync
    assert grads[0].abs().sum() > 0
