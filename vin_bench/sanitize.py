"""A small case of every kernel, for compute-sanitizer (``bench/gpu_check.sh`` runs it under memcheck,
and racecheck when asked): chunk and global attention forward and backward (D=72 with globals, key
splits), merge, and overlap_fuse through Triton and the CUDA extension, in bf16 and fp32. Prints one
``<case>: ok`` or ``<case>: NON-FINITE`` line per case and exits non-zero on a non-finite result.

``--device cpu`` (``gpu_check.sh --dry-run``) runs the cases in fp32 on the CPU with shorter sequences,
Triton under ``TRITON_INTERPRET=1`` and without the CUDA extension, to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

import vin_kernels as vk
from vin_kernels.triton import global_attention as triton_global


def cases(device: torch.device, dt: torch.dtype, tokens: int, heads: int) -> dict[str, list[torch.Tensor]]:
    """Every case's outputs and gradients on ``device`` in ``dt``; ``tokens`` (a multiple of 10) per sequence,
    in chunks of 0.35 of it with 0.15 of context (a short last chunk)."""
    checks = {}
    name = str(dt).replace("torch.", "")
    q, k, v = (torch.randn(2, tokens, heads, 72, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    gk, gv = (torch.randn(1, 37, heads, 72, device=device, dtype=dt, requires_grad=True) for _ in range(2))
    for context_grad in (True, False):
        o, lse = vk.chunk_attention(q, k, v, chunk_size=tokens * 7 // 20, context_size=tokens * 3 // 20, global_k=gk, global_v=gv,
                                    context_grad=context_grad, return_lse=True, backend="triton")  # fmt: skip
        grads = torch.autograd.grad((o.float().sum() + lse.sum()), (q, k, v, gk, gv))
        checks[f"chunk_attention {name} context_grad={context_grad}"] = [o, lse, *grads]
    gq = torch.randn(2, 40, heads, 72, device=device, dtype=dt, requires_grad=True)
    o, lse = vk.global_attention(gq, k, v, tokens_per_frame=10, keyframe_stride=3, keyframe_offset=1, return_lse=True, backend="triton")
    checks[f"global_attention {name}"] = [o, lse, *torch.autograd.grad(o.float().sum() + lse.sum(), (gq, k, v))]
    with torch.no_grad():
        o3, lse3 = triton_global.forward(gq, k, v, 10, 3, 1, 72**-0.5, splits=3)
        grads3 = triton_global.backward(torch.ones_like(o3), None, gq, k, v, o3, lse3, 10, 3, 1, 72**-0.5, splits=3)
        checks[f"global_attention {name} splits=3"] = [o3, lse3, *grads3]
        lse_b = torch.randn_like(lse3)
        checks[f"merge_attention {name}"] = list(vk.merge_attention(o3, lse3, o3.flip(1), lse_b, backend="triton"))
        layout = vk.ChunkLayout.windows(30, 12, 5)
        eps = torch.randn(2, layout.num_chunks, 12, 3, 7, device=device, dtype=dt)
        x = torch.randn(2, 30, 3, 7, device=device, dtype=dt)
        for backend in ("triton", "cuda"):
            if vk.backends()[backend].available:
                checks[f"overlap_fuse {name} {backend}"] = [
                    vk.overlap_fuse(eps, layout, backend=backend),
                    vk.overlap_fuse(eps, layout, x=x, coeffs=(0.9, -0.2), out_windows=True, backend=backend),
                ]
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vin_bench.sanitize", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: fp32 under the Triton interpreter (default: cuda)")
    device = torch.device(parser.parse_args(argv).device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("sanitize needs a CUDA GPU (or --device cpu)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    checks = {}
    for dt in (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,):
        checks |= cases(device, dt, *((200, 2) if device.type == "cuda" else (20, 1)))  # the interpreter is slow
    if device.type == "cuda":
        torch.cuda.synchronize()
    bad = [name for name, tensors in checks.items() if not all(torch.isfinite(t.float()).all() for t in tensors)]
    for name in checks:
        print(f"{name}: {'NON-FINITE' if name in bad else 'ok'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
