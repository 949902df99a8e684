"""A small case of every kernel, for compute-sanitizer (``bench/gpu_check.sh`` runs it under memcheck
and racecheck): chunk and global attention forward and backward (D=72 with globals, key splits),
merge, and overlap_fuse through Triton and the CUDA extension. Exits non-zero on a non-finite result."""

from __future__ import annotations

import sys

import torch

import vin_kernels as vk
from vin_kernels.triton import global_attention as triton_global


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    checks = {}
    q, k, v = (torch.randn(2, 200, 2, 72, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    gk, gv = (torch.randn(1, 37, 2, 72, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
    for context_grad in (True, False):
        o, lse = vk.chunk_attention(q, k, v, chunk_size=70, context_size=30, global_k=gk, global_v=gv,
                                    context_grad=context_grad, return_lse=True, backend="triton")
        grads = torch.autograd.grad((o.float().sum() + lse.sum()), (q, k, v, gk, gv))
        checks[f"chunk_attention context_grad={context_grad}"] = [o, lse, *grads]
    gq = torch.randn(2, 40, 2, 72, device=dev, dtype=dt, requires_grad=True)
    o, lse = vk.global_attention(gq, k, v, tokens_per_frame=10, keyframe_stride=3, keyframe_offset=1, return_lse=True, backend="triton")
    checks["global_attention"] = [o, lse, *torch.autograd.grad(o.float().sum() + lse.sum(), (gq, k, v))]
    with torch.no_grad():
        o3, lse3 = triton_global.forward(gq, k, v, 10, 3, 1, 72**-0.5, splits=3)
        checks["global_attention splits=3"] = [o3, lse3, *triton_global.backward(torch.ones_like(o3), None, gq, k, v, o3, lse3, 10, 3, 1, 72**-0.5, splits=3)]
        lse_b = torch.randn_like(lse3)
        checks["merge_attention"] = list(vk.merge_attention(o3, lse3, o3.flip(1), lse_b, backend="triton"))
        layout = vk.ChunkLayout.windows(30, 12, 5)
        eps = torch.randn(2, layout.num_chunks, 12, 3, 7, device=dev, dtype=dt)
        x = torch.randn(2, 30, 3, 7, device=dev, dtype=dt)
        for backend in ("triton", "cuda"):
            if vk.backends()[backend].available:
                checks[f"overlap_fuse {backend}"] = [
                    vk.overlap_fuse(eps, layout, backend=backend),
                    vk.overlap_fuse(eps, layout, x=x, coeffs=(0.9, -0.2), out_windows=True, backend=backend),
                ]
    torch.cuda.synchronize()
    bad = [name for name, tensors in checks.items() if not all(torch.isfinite(t.float()).all() for t in tensors)]
    for name in checks:
        print(f"{name}: {'NON-FINITE' if name in bad else 'ok'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
