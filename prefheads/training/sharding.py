"""Sharded training with torch FSDP2 (``fully_shard``) for the lora and full modes.

Each process of a ``torchrun --nproc-per-node N`` launch holds 1/N of every parameter, gradient
and optimizer state (gloo on CPU, NCCL on GPU). Every decoder block is its own FSDP group (its
weights are gathered for its forward and backward only); a thin root module around the
:class:`~prefheads.training.strategies.Trainable` holds the rest (embeddings, final norm, LM
head, the reward head), so one training-loop call ``root(rows)`` gathers what it needs.
accelerate drives FSDP only on GPUs (on CPU it sets up plain data parallel), hence torch here.

After training :meth:`Sharding.finish` gathers the full weights and hands the backbone and head
back as plain modules, built beforehand as weightless (meta-device) copies: the preference
model then saves and scores as after a one-process run. Checkpoints hold full tensors in the
one-process layout, so a run may resume under another process count.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def is_main_process() -> bool:
    """Whether this is the process that writes outputs (rank 0 of a launch, or the only one)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _dtensor() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


class _Root(nn.Module):
    """The FSDP root: forwards to the trainable, so its hooks gather the root group's weights."""

    def __init__(self, trainable: nn.Module) -> None:
        super().__init__()
        self.trainable = trainable

    def forward(self, rows: torch.Tensor) -> Any:
        return self.trainable(rows)


def _aliases(module: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), each group in registration order."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _weightless_copy(modules: list[nn.Module]) -> list[nn.Module]:
    """Copies of ``modules`` whose parameters are on the meta device (no memory); buffers are copied."""
    memo: dict[int, Any] = {}
    for m in modules:
        for p in m.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return [copy.deepcopy(m, memo) for m in modules]


def _load_plain(module: nn.Module, state: Mapping[str, torch.Tensor], aliases: list[list[str]]) -> None:
    """Fill a weightless copy with full tensors, then tie the parameters that were tied."""
    module.load_state_dict(dict(state), strict=True, assign=True)
    for first, *rest in aliases:
        p = module.get_parameter(first)
        for name in rest:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, leaf, p)


def gather(tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Full tensors of a state (a collective: every process calls it, in the same order)."""
    if tensors is None:
        return None
    dt = _dtensor()
    return {k: v.full_tensor() if isinstance(v, dt) else v for k, v in tensors.items()}


def scatter_like(tensors: Mapping[str, torch.Tensor] | None, like: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor] | None:
    """This process's shards of full ``tensors``, laid out as the same keys of ``like``."""
    if tensors is None:
        return None
    from torch.distributed.tensor import distribute_tensor

    dt = _dtensor()
    out = {}
    for k, v in tensors.items():
        ref = like.get(k)
        # every process read the same full tensor: each keeps its own slice, no communication
        out[k] = distribute_tensor(v, ref.device_mesh, ref.placements, src_data_rank=None) \
            if isinstance(ref, dt) else v
    return out


class _FullOptimizerState:
    """What :func:`~prefheads.training.checkpoint.save_checkpoint` and ``load_checkpoint`` use of an
    optimizer, in full tensors: the one-process layout whatever the number of processes."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def gathered(self) -> "_FullOptimizerState":
        """Gather the state now (a collective), for :meth:`state_dict` on the main process."""
        sd = self.optimizer.state_dict()
        self._full = {"param_groups": sd["param_groups"],
                      "state": {i: gather(st) for i, st in sd["state"].items()}}
        return self

    def state_dict(self) -> dict[str, Any]:
        return self._full

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        dt = _dtensor()
        state = {}
        for i, st in sd["state"].items():
            p = self.params[int(i)]
            # moments are shaped like their parameter: shard them as it is; step counts stay whole
            like = {k: p for k, v in st.items() if torch.is_tensor(v) and isinstance(p, dt) and v.shape == p.shape}
            state[i] = {**st, **scatter_like({k: st[k] for k in like}, like)}
        self.optimizer.load_state_dict({"param_groups": sd["param_groups"], "state": state})


class Sharding:
    """FSDP2 over every process of the default process group, for one trainable.

    Build it after the trainable's setup and before its optimizer (the parameters are replaced
    by their shards); train through :attr:`root`; call :meth:`finish` on every process at the end.

    Args:
        trainable: A lora or full :class:`~prefheads.training.strategies.Trainable`.
    """

    def __init__(self, trainable: nn.Module) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from prefheads.hooks import hook_module

        if not dist.is_initialized():
            raise RuntimeError("sharded training needs a process group: launch with torchrun --nproc-per-node N")
        self.trainable = trainable
        pm = trainable.pm
        # a shared prompt reaches its candidates through the KV cache only, where FSDP's backward
        # hooks (on each block's output) never see it and so never gather the weights it needs:
        # encode each sequence whole while sharded (the same features, see prefheads.engine)
        self._shared_prefix, pm.shared_prefix = pm.shared_prefix, False
        self._shares_backbone = trainable.backbone is pm.backbone
        self._aliases = (_aliases(trainable.head), _aliases(trainable.backbone))
        # built before sharding: FSDP modules cannot be copied, and these cost no memory
        self._plain = _weightless_copy([trainable.head, trainable.backbone])
        device = next(trainable.parameters()).device
        self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        blocks = [hook_module(trainable.backbone, pm.profile, i) for i in range(pm.num_layers)]
        for block in blocks:
            fully_shard(block, mesh=self.mesh)
        self.root = fully_shard(_Root(trainable), mesh=self.mesh)
        self._fsdp = [*blocks, self.root]
        if trainable.prior is not None:  # it holds the parameters it decays: hand it their shards
            from prefheads.optim import PriorRegularizer

            prior, named = trainable.prior, dict(trainable.named_parameters())
            trainable.prior = PriorRegularizer([(n, named[n]) for n in prior.names], coefficient=prior.coefficient)

    def reshard(self) -> None:
        """Register every parameter's shard (after a forward the root keeps its weights gathered)."""
        for m in self._fsdp:
            m.reshard()

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable's :meth:`trainable_state`, sharded (copy with ``clone``)."""
        self.reshard()
        return self.trainable.trainable_state()

    def scatter(self, tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """This process's shards of a full (one-process layout) trainable state."""
        return scatter_like(tensors, self.state())

    def full_optimizer(self, optimizer: Any) -> _FullOptimizerState:
        """``optimizer``'s state in full tensors (a collective) for ``save_checkpoint``."""
        return _FullOptimizerState(getattr(optimizer, "optimizer", optimizer)).gathered()

    def optimizer_loader(self, optimizer: Any) -> _FullOptimizerState:
        """An object whose ``load_state_dict`` takes a full (one-process layout) optimizer state."""
        return _FullOptimizerState(getattr(optimizer, "optimizer", optimizer))

    def finish(self) -> None:
        """Gather the full weights into plain modules and hand them to the trainable and its model.

        A collective: every process calls it and ends with the whole trained backbone and head.
        """
        self.reshard()
        t = self.trainable
        head_sd, backbone_sd = gather(t.head.state_dict()), gather(t.backbone.state_dict())
        head, backbone = self._plain
        _load_plain(head, head_sd, self._aliases[0])
        _load_plain(backbone, backbone_sd, self._aliases[1])
        pm = t.pm
        pm.shared_prefix = self._shared_prefix
        pm.heads[t.head_name] = head
        if self._shares_backbone:
            pm.backbone = backbone
        t.head, t.backbone = head, backbone
        self._fsdp, self.root = [], None
