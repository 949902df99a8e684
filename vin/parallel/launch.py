"""Start local processes that form a torch.distributed group, or join the group torchrun started."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "backend_problem", "default_backend", "init_from_env", "under_torchrun"]


def default_backend(nproc: int) -> str:
    """``"nccl"`` when every one of ``nproc`` local ranks can have a GPU of its own, else ``"gloo"``."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "nccl" if dist.is_nccl_available() and gpus >= nproc else "gloo"


def backend_problem(backend: str, nproc: int) -> str | None:
    """Why ``nproc`` local ranks cannot use ``backend`` here, or None when they can (NCCL: a GPU per rank)."""
    if backend not in ("gloo", "nccl"):
        return f"backend must be 'gloo' or 'nccl', got {backend!r}"
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < nproc:
            return f"NCCL needs a CUDA GPU per local rank: {nproc} rank(s), {gpus} GPU(s) here (use gloo)"
        if not dist.is_nccl_available():
            return "this torch has no NCCL (use gloo)"
    return None


def under_torchrun() -> bool:
    """True in a process started by torchrun (its environment names the rank and the world size)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(backend: str | None = None) -> None:
    """Join the process group torchrun describes in the environment (``env://``); NCCL ranks take GPU ``LOCAL_RANK``."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    backend = backend or default_backend(local)
    if problem := backend_problem(backend, local):
        raise ValueError(problem)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, init_method="env://")


def _rank_main(rank, nproc, backend, init_file, threads, fn, args, results):
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=nproc)
    try:
        value = fn(*args)
    finally:
        dist.destroy_process_group()
    buffer = io.BytesIO()
    torch.save(value, buffer)  # plain bytes: nothing shared with a process that is about to exit
    results.put((rank, buffer.getvalue()))


def launch(
    fn: Callable, nproc: int, args: tuple = (), *, backend: str | None = None, threads: int | None = None
) -> list:
    """Run ``fn(*args)`` on ``nproc`` new local processes forming the default process group; return each rank's result.

    The processes are spawned (``torch.multiprocessing``), join a group through a file in a fresh
    temporary folder (no port to pick), run ``fn`` and leave the group. An exception in any rank is
    raised here with its traceback (``torch.multiprocessing.ProcessRaisedException``).

    Args:
        fn: a module-level function (it is pickled by reference); its result must be ``torch.save``-able.
        nproc: number of processes (ranks).
        backend: ``"gloo"`` or ``"nccl"``; default :func:`default_backend` (NCCL ranks use GPU ``rank``).
        threads: ``torch.set_num_threads`` in each process; default ``cpu_count // nproc`` (at least 1).
    Returns:
        ``[result of rank 0, result of rank 1, ...]``.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    backend = backend or default_backend(nproc)
    if problem := backend_problem(backend, nproc):
        raise ValueError(problem)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    folder = tempfile.mkdtemp(prefix="vin-parallel-")
    results = mp.get_context("spawn").SimpleQueue()
    try:
        context = mp.start_processes(
            _rank_main,
            args=(nproc, backend, os.path.join(folder, "rendezvous"), threads, fn, args, results),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        values = {}
        while not context.join(timeout=0.05):
            while not results.empty():
                rank, data = results.get()
                values[rank] = data
        while not results.empty():
            rank, data = results.get()
            values[rank] = data
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [torch.load(io.BytesIO(values[r]), weights_only=False) for r in range(nproc)]
