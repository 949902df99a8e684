"""The collectives a parallel sample uses, on a torch.distributed process group, counting the bytes sent."""

from __future__ import annotations

import hashlib
import pickle

import torch
import torch.distributed as dist

__all__ = ["Communicator"]


class Communicator:
    """A process group with the three operations of :func:`vin.parallel.sample`, counting bytes.

    ``bytes_sent`` is what this rank has sent since creation: the payload of every point-to-point
    send, and ``(world - 1) * s`` for an all-gather of ``s`` bytes per rank (what a ring all-gather
    sends; other algorithms move the same payload).

    Raises ValueError (naming ``group``) when torch.distributed is not initialized, the calling
    process is not a member of ``group``, or ``device`` cannot be used with the group's backend.
    """

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "group: torch.distributed is not initialized; call torch.distributed.init_process_group "
                "(or run through `python -m vin.parallel` / torchrun) before vin.parallel.sample"
            )
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError(
                f"group: this process (global rank {dist.get_rank()}) is not a member of the group; call "
                "vin.parallel.sample only on the group's ranks"
            )
        self.world = dist.get_world_size(self.group)
        backend = dist.get_backend(self.group)
        if backend == "nccl" and device.type != "cuda":
            raise ValueError(f"group: the NCCL backend needs CUDA tensors, got tensors on {device}; use gloo on a CPU")
        self.device = device
        self.bytes_sent = 0

    def _peer(self, rank: int) -> int:
        return dist.get_global_rank(self.group, rank) if self.group is not dist.group.WORLD else rank

    def check_same(self, what: str, fingerprint: dict) -> None:
        """Raise ValueError on every rank unless all ranks passed an equal ``fingerprint``.

        Sample arguments that disagree across ranks would otherwise give a wrong video or a hang.
        (A one-off all-gather of a digest per rank, not counted in ``bytes_sent``.)
        """
        digest = hashlib.sha256(pickle.dumps(sorted(fingerprint.items()))).hexdigest()
        digests = [None] * self.world
        dist.all_gather_object(digests, (digest, fingerprint), group=self.group)
        differing = sorted(
            key for key in fingerprint if any(other[1].get(key) != fingerprint[key] for other in digests)
        )
        if any(d != digest for d, _ in digests):
            raise ValueError(
                f"{what} differ across the ranks of the group in {differing or 'their digests'}; every rank must pass "
                "the same model weights, text, layout, generator state and sampling arguments"
            )

    def all_gather(self, tensor: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Rank ``r`` holds ``counts[r]`` frames ``[B, counts[r], ...]``; returns every rank's tensor.

        The pieces are padded to the largest along dim 1 and exchanged by one all-gather.
        """
        if self.world == 1:
            return [tensor]
        padded = tensor.new_zeros((tensor.shape[0], max(counts), *tensor.shape[2:]))
        padded[:, : tensor.shape[1]] = tensor
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded, group=self.group)
        self.bytes_sent += (self.world - 1) * padded.nbytes
        return [piece[:, :count] for piece, count in zip(out, counts)]

    def exchange(
        self, sends: list[tuple[int, torch.Tensor]], receives: list[tuple[int, tuple[int, ...], torch.dtype]]
    ) -> list[torch.Tensor]:
        """Point-to-point: send ``(dst, tensor)``, receive ``(src, shape, dtype)``; returns the received tensors.

        All operations go out together (``torch.distributed.batch_isend_irecv``), so neighbours that
        send to each other do not deadlock.
        """
        ops = [dist.P2POp(dist.isend, t.contiguous(), self._peer(dst), self.group) for dst, t in sends]
        received = [torch.empty(shape, dtype=dtype, device=self.device) for _, shape, dtype in receives]
        ops += [dist.P2POp(dist.irecv, t, self._peer(src), self.group) for (src, _, _), t in zip(receives, received)]
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        self.bytes_sent += sum(t.nbytes for _, t in sends)
        return received
