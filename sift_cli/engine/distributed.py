"""The optimizer step on row-sharded parameters (FSDP2's `fully_shard`, DTensors sharded on dim 0).

Element-wise work (momenta, AdamW, weight decay, master weights) runs on each rank's own rows. What
needs a whole matrix follows the pattern of the distributed Muon implementations (dion, Moonlight):

- the gate's cosines need only dot products and squared norms: each rank sums its rows, and one
  all-reduce of a (blocks x 6) table of scalars per step gives every rank every block's tau, so all
  ranks agree on every branch without moving a matrix; BLUR's global rho rides in the same all-reduce;
- every spectral parameter has an owner rank, assigned once, largest cost (m n min(m, n) per block)
  first to the least-loaded rank, so the matrix work is balanced;
- parameters of one shape are exchanged together: one all-to-all sends each rank's rows of the
  momenta (both, when a block takes the SIFT branch; lam*M_f + M_g, when all take Muon) to the
  owners, each owner computes gate branch and direction of its whole matrices exactly as the
  single-process optimizer does (same functions, same subspace caches, which live on the owner), and
  a second all-to-all returns each rank its rows of the update.

Each rank's local rows are those torch.chunk gives along dim 0, which is how fully_shard splits them
(the last ranks may hold fewer rows, or none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .linalg import msign
from .precision import STOCHASTIC_SEED, fp32_weights, write_weights
from .routing import Block
from .updates import adamw_update, spectral_scale

PARTIALS = 6
"""Per block: <G_f, G_g>, |G_f|^2, |G_g|^2, <M_f, M_g>, |M_f|^2, |M_g|^2, summed over a rank's rows."""


def is_sharded(params: list[Tensor]) -> bool:
    """True when the parameters are DTensors (fully_shard has run); they must all be, or none."""
    kinds = {isinstance(p, DTensor) for p in params}
    if len(kinds) > 1:
        raise ValueError("some trained parameters are sharded DTensors and some are not; shard the whole model")
    return kinds == {True}


def local(t: Tensor) -> Tensor:
    """A rank's own part of a DTensor (a view: in-place changes reach the DTensor); a tensor as is."""
    return t.to_local() if isinstance(t, DTensor) else t


def row_counts(rows: int, world: int) -> list[int]:
    """Rows per rank under torch.chunk along dim 0 (what fully_shard keeps on each rank)."""
    per = math.ceil(rows / world)
    return [max(0, min(per, rows - rank * per)) for rank in range(world)]


def block_cost(block: Block) -> int:
    m, n = block.shape
    return m * n * min(m, n)


def assign_owners(costs: list[int], world: int) -> list[int]:
    """Owner rank of each item: largest cost first, to the rank with the least cost so far (ties: the
    lower rank), so the ranks' matrix work is balanced; the same on every rank."""
    load = [0] * world
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += costs[index]
    return owners


@dataclass
class _Spectral:
    """One spectral parameter during a sharded step: its local momenta and, on its owner, the whole
    matrices the exchange assembles."""

    index: int
    param: nn.Parameter
    state: dict
    work: Tensor
    m_f: Tensor
    m_g: Tensor
    owner: int
    rows: list[int]
    branches: list[str]
    quality: dict[str, tuple[float, bool]] = field(default_factory=dict)
    """The owner's (subspace error estimate, fallback) per SIFT block, by block name."""


class ShardedStep:
    """The sharded path of SiftOptimizer.step (`opt`; typed loosely because the optimizer module imports
    this one): the optimizer hands over its members and captured gradients, and this computes every
    update with the collectives described above, reporting each block through `report` (BlockReport)."""

    def __init__(self, opt: Any, group: dist.ProcessGroup | None = None) -> None:
        self.opt = opt
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        members = [p for g in opt.param_groups if g["name"] == "spectral" for p in g["params"]]
        costs = [sum(block_cost(b) for b in opt._blocks[p]) for p in members]
        self.owner = dict(zip(members, assign_owners(costs, self.world)))

    def owned(self, p: nn.Parameter) -> bool:
        """Whether this rank computes p's direction (and keeps p's subspace caches)."""
        return self.owner.get(p, self.rank) == self.rank

    def step(self, members: list[tuple[dict, nn.Parameter]], grads_f: list[Tensor], grads_g: list[Tensor],
             report: Callable[..., Any]) -> list[Any]:  # fmt: skip
        opt, cfg = self.opt, self.opt.cfg
        spectral_method = cfg.method in ("sift", "muon")
        g_f = [local(g) for g in grads_f]
        g_g = [local(g) for g in grads_g]
        states, works, spectral = [], [], {}
        rows_of: dict[int, list[tuple[Block, slice]]] = {}
        table_rows: list[tuple[int, Block]] = []
        for i, (group, p) in enumerate(members):
            state = opt._ensure_state(p)
            is_spectral = group["name"] == "spectral" and spectral_method
            if is_spectral:
                state["step"] += 1
            view = _LocalState(state)
            states.append(view)
            works.append(fp32_weights(local(p), view))
            rows = row_counts(p.shape[0], self.world)
            start = sum(rows[: self.rank])
            mine = range(start, start + rows[self.rank])
            # AdamW reports a parameter once, whatever row blocks its route has (as the unsharded step does)
            blocks = opt._blocks[p] if is_spectral else [Block(opt._routes[p].name, slice(None), tuple(p.shape))]
            rows_of[i] = [(block, _local_rows(block.rows, p.shape[0], mine)) for block in blocks]
            table_rows.extend((i, block) for block in blocks)
            if is_spectral:
                m_f = opt._momentum(view, "momentum_f", g_f[i])
                m_g = opt._momentum(view, "momentum_g", g_g[i])
                spectral[i] = _Spectral(i, p, state, works[i], m_f, m_g, self.owner[p], rows, [])
        table = self._partials(rows_of, table_rows, g_f, g_g, spectral, cfg.method == "blur")
        taus = {}
        for row, (i, block) in enumerate(table_rows):
            dot_g, ff_g, gg_g, dot_m, ff_m, gg_m = table[row].tolist()
            taus[(i, block.name)] = (_cosine(dot_g, ff_g, gg_g), _cosine(dot_m, ff_m, gg_m) if i in spectral else math.nan)
        decided: list[tuple[Any, ...]] = []
        for i, block in table_rows:
            group, p = members[i]
            tau_grad, tau_m = taus[(i, block.name)]
            if i in spectral:
                tau = tau_grad if cfg.tau_source == "grad" else tau_m
                route = opt._routes[p]
                branch = "sift" if cfg.method == "sift" and route.candidate and tau < cfg.eps else "muon"
                spectral[i].branches.append(branch)
                decided.append((block.name, block.shape, tau_grad, tau_m, branch))
            else:
                decided.append((block.name, block.shape, tau_grad, math.nan, "adamw"))
        rho = self._rho(table[-1]) if cfg.method == "blur" else 0.0
        for i, (group, p) in enumerate(members):
            if i in spectral:
                works[i].mul_(1 - group["lr"] * group["weight_decay"])
                continue
            state = states[i]
            if cfg.method == "blur":
                dtype = torch.promote_types(g_g[i].dtype, torch.float32)
                grad = g_g[i].to(dtype) + cfg.blur_alpha * (g_f[i].to(dtype) - rho * g_g[i].to(dtype))
            else:
                grad = g_f[i].float().mul(cfg.lam).add_(g_g[i])
            adamw_update(works[i], grad, state, group["lr"], cfg.betas, cfg.adam_eps, group["weight_decay"])
            state.commit()
        for shape, items in _by_shape(spectral.values()).items():
            self._exchange(shape, items, members)
        for i, (group, p) in enumerate(members):
            seed = STOCHASTIC_SEED + 1_000_003 * states[i]["step"] + i
            write_weights(local(p), states[i], works[i], cfg.update_rounding, seed)
        qualities = self._qualities(table_rows, spectral)
        return [report(*args, *quality) for args, quality in zip(decided, qualities)]

    def _qualities(self, table_rows: list[tuple[int, Block]], spectral: dict) -> list[tuple[float, bool]]:
        """Every block's (subspace error estimate, fallback) on every rank: only a SIFT block's owner
        computed them, so owners fill their rows and one all-reduce sums the table."""
        table = torch.zeros(len(table_rows), 3, dtype=torch.float64)
        for row, (i, block) in enumerate(table_rows):
            item = spectral.get(i)
            if item is not None and block.name in item.quality:
                error, fallback = item.quality[block.name]
                table[row] = torch.tensor([error, float(fallback), 1.0], dtype=torch.float64)
        device = next((item.work.device for item in spectral.values()), torch.device("cpu"))
        table = table.to(device)
        dist.all_reduce(table, group=self.group)
        return [(error, fallback > 0) if known else (math.nan, False) for error, fallback, known in table.cpu().tolist()]

    def _partials(self, rows_of: dict, table_rows: list, g_f: list[Tensor], g_g: list[Tensor],
                  spectral: dict, blur: bool) -> Tensor:  # fmt: skip
        """Every block's six sums over this rank's rows (and, for BLUR, <G_f, G_g> and |G_g|^2 over
        everything in a last row), summed over ranks in one all-reduce."""
        table = torch.zeros(len(table_rows) + 1, PARTIALS, dtype=torch.float64)
        row = 0
        for i, blocks in rows_of.items():
            for block, rows in blocks:
                f, g = g_f[i][rows].double(), g_g[i][rows].double()
                sums = [torch.sum(f * g), torch.sum(f * f), torch.sum(g * g)]
                if i in spectral:
                    mf, mg = spectral[i].m_f[rows].double(), spectral[i].m_g[rows].double()
                    sums += [torch.sum(mf * mg), torch.sum(mf * mf), torch.sum(mg * mg)]
                table[row, : len(sums)] = torch.stack(sums)
                row += 1
        if blur:
            f = torch.cat([x.reshape(-1) for x in g_f]).double()
            g = torch.cat([x.reshape(-1) for x in g_g]).double()
            table[-1, :2] = torch.stack([torch.sum(f * g), torch.sum(g * g)])
        device = g_f[0].device if g_f else torch.device("cpu")
        table = table.to(device)
        dist.all_reduce(table, group=self.group)
        return table.cpu()

    @staticmethod
    def _rho(row: Tensor) -> float:
        dot, sq = row[0].item(), row[1].item()
        return dot / sq if sq > 0.0 else 0.0

    def _exchange(self, shape: tuple[int, ...], items: list[_Spectral], members: list) -> None:
        """Send this rank's rows of every item's momenta to the item's owner, let the owners compute
        the whole updates, and take back this rank's rows of each (two all-to-alls for the shape)."""
        cfg = self.opt.cfg
        rows = items[0].rows
        per = max(rows)
        payloads = 2 if any("sift" in item.branches for item in items) else 1
        owned_by = [[item for item in items if item.owner == rank] for rank in range(self.world)]
        device = items[0].m_f.device

        def padded(x: Tensor) -> Tensor:
            out = torch.zeros((per, *shape[1:]), dtype=torch.float32, device=device)
            out[: x.shape[0]] = x
            return out

        send = []
        for rank in range(self.world):
            for item in owned_by[rank]:
                matrices = [item.m_f, item.m_g] if payloads == 2 else [cfg.lam * item.m_f + item.m_g]
                send.extend(padded(m).reshape(-1) for m in matrices)
        chunk = per * math.prod(shape[1:])
        mine = owned_by[self.rank]
        received = self._all_to_all(send, [len(owned_by[r]) * payloads * chunk for r in range(self.world)],
                                    [len(mine) * payloads * chunk] * self.world, device)  # fmt: skip
        gathered = received.reshape(self.world, len(mine), payloads, per, *shape[1:])
        updates = []
        for j, item in enumerate(mine):
            whole = [torch.cat([gathered[r, j, q, : rows[r]] for r in range(self.world)]) for q in range(payloads)]
            updates.append(self._update(item, whole, members[item.index][0]))
        back = [padded(update[sum(rows[:r]) : sum(rows[: r + 1])]).reshape(-1) for r in range(self.world) for update in updates]
        returned = self._all_to_all(back, [len(mine) * chunk] * self.world,
                                    [len(owned_by[r]) * chunk for r in range(self.world)], device)  # fmt: skip
        offset = 0
        for rank in range(self.world):
            for item in owned_by[rank]:
                part = returned[offset : offset + chunk].reshape(per, *shape[1:])[: rows[self.rank]]
                item.work.add_(part)
                offset += chunk

    def _update(self, item: _Spectral, whole: list[Tensor], group: dict) -> Tensor:
        """-lr * s(m, n) * D of every block of an owned parameter, from its whole momenta."""
        opt, cfg = self.opt, self.opt.cfg
        update = torch.zeros(item.param.shape, dtype=torch.float32, device=whole[0].device)
        for block, branch in zip(opt._blocks[item.param], item.branches):
            r = block.rows
            if branch == "sift":
                direction, quality = opt._sift_direction(item.state, block.suffix, whole[0][r], whole[1][r])
                item.quality[block.name] = (quality.error, quality.fallback)
            else:
                combined = cfg.lam * whole[0][r] + whole[1][r] if len(whole) == 2 else whole[0][r]
                direction = msign(combined)
            update[r] = direction.to(torch.float32) * (-group["lr"] * spectral_scale(block.shape, cfg.scale_rule))
        return update

    def _all_to_all(self, parts: list[Tensor], send_sizes: list[int], receive_sizes: list[int], device: torch.device) -> Tensor:
        send = torch.cat(parts) if parts else torch.zeros(0, device=device)
        out = torch.empty(sum(receive_sizes), dtype=torch.float32, device=device)
        dist.all_to_all_single(out, send, receive_sizes, send_sizes, group=self.group)
        return out


class _LocalState(dict):
    """A parameter's optimizer state with its DTensors seen as this rank's local tensors (views, so
    in-place updates reach the state); plain entries (step, counters) are written back by commit()."""

    def __init__(self, state: dict) -> None:
        super().__init__({key: local(value) for key, value in state.items()})
        self._state = state

    def commit(self) -> None:
        self._state["step"] = self["step"]


def _local_rows(block_rows: slice, total: int, mine: range) -> slice:
    """The rows of a block (a slice of the whole matrix) that this rank holds, in local indices."""
    start, stop, _ = block_rows.indices(total)
    low, high = max(start, mine.start), min(stop, mine.stop)
    return slice(low - mine.start, max(low, high) - mine.start)


def _cosine(dot: float, ff: float, gg: float) -> float:
    denom = math.sqrt(ff) * math.sqrt(gg)
    return dot / denom if denom > 0.0 else 0.0


def _by_shape(items: object) -> dict[tuple[int, ...], list[_Spectral]]:
    groups: dict[tuple[int, ...], list[_Spectral]] = {}
    for item in items:  # type: ignore[attr-defined]
        groups.setdefault(tuple(item.param.shape), []).append(item)
    return groups
