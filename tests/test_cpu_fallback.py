"""Without a GPU and without the interpreter (the plain CPU path), tritonbn computes with torch ops inside its
own autograd: torch's CPU batch norm forward, and derivatives right at every order. Run in a fresh
interpreter with TRITON_INTERPRET unset (the other tests flip the same switch in-process: the ``path``
fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    import tritonbn
    from tritonbn.functional import uses_triton

    x = torch.randn(4, 3, 5, requires_grad=True)
    assert not uses_triton(x)
    rm, rv = torch.zeros(3), torch.ones(3)
    rm_t, rv_t = rm.clone(), rv.clone()
    y = tritonbn.batch_norm(x, rm, rv, training=True)
    y_t = F.batch_norm(x, rm_t, rv_t, training=True)
    assert torch.equal(y, y_t) and torch.equal(rm, rm_t) and torch.equal(rv, rv_t)

    # detached statistics on the fallback: dx = dy * invstd
    y = tritonbn.batch_norm(x, rm, rv, training=True, detach_stats=True)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    var = x.detach().var((0, 2), unbiased=False)
    torch.testing.assert_close(dx, dy * (var + 1e-5).rsqrt().reshape(1, 3, 1))
    torch.testing.assert_close(rv, 0.9 * rv_t + 0.1 * x.detach().var((0, 2), unbiased=True))

    # SyncBatchNorm outside torch.distributed: the same CPU batch norm
    sbn = tritonbn.SyncBatchNorm(3)
    rm_t, rv_t = torch.zeros(3), torch.ones(3)
    y_t = F.batch_norm(x, rm_t, rv_t, sbn.weight, sbn.bias, training=True)
    assert torch.equal(sbn(x), y_t) and torch.equal(sbn.running_var, rv_t)

    net = tritonbn.convert_model(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)))
    net(torch.randn(2, 1, 3, 3)).sum().backward()

    # third order in train mode (torch's own CPU batch norm gets it wrong) against the float64 reference
    from tritonbn import reference
    xd = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    dy, v, u = (torch.randn_like(xd) for _ in range(3))
    def third(bn):
        y = bn(xd, None, None, None, None, training=True)
        (g1,) = torch.autograd.grad(y, xd, dy, create_graph=True)
        (g2,) = torch.autograd.grad(g1, xd, v, create_graph=True)
        return torch.autograd.grad(g2, xd, u)[0]
    torch.testing.assert_close(third(tritonbn.batch_norm), third(reference.batch_norm), atol=1e-9, rtol=1e-7)

    # torch.func: the Jacobian of every sample of an eval layer, and the explicit backward
    from torch.func import jacrev, vmap
    bn = tritonbn.BatchNorm2d(3).eval()
    ref = torch.nn.BatchNorm2d(3).eval()
    xs = torch.randn(4, 1, 3, 2, 2)
    torch.testing.assert_close(vmap(jacrev(bn))(xs), vmap(jacrev(ref))(xs))
    g = torch.randn_like(x)
    mean, invstd = x.detach().mean((0, 2)), (x.detach().var((0, 2), unbiased=False) + 1e-5).rsqrt()
    dx, _, _ = tritonbn.batch_norm_backward(g, x.detach(), None, mean, invstd)
    (want,) = torch.autograd.grad(tritonbn.batch_norm(x, None, None, training=True), x, g)
    torch.testing.assert_close(dx, want)
    print("fallback ok")
    """
)


def test_plain_cpu_path_in_a_process_without_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout
