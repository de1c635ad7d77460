"""Momentum streams for measuring the fast SIFT path the way training exercises it.

A fresh matrix flatters a warm-started subspace iteration: what matters is how far each step's update is
from the exact path's while the momenta move. Two deterministic sources:
- `drifting_stream`: a rotating low-rank signal plus Gaussian noise per gradient, in conflict between f and
  g, turned into Nesterov momenta (beta 0.95) as the optimizer computes them. Cheap, any shape.
- `training_streams`: gradients of real training (SmolLM2-135M on the unlearning CPU preset with the demo's
  offline data, every projection of the steered layers trained), recorded block by block as each step
  captures them. Regenerated at bench time (about a minute of training) instead of stored.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor


class NesterovMomenta:
    """The two momenta of one block as SiftOptimizer computes them: B <- beta B + G, M = G + beta B."""

    def __init__(self, beta: float = 0.95) -> None:
        self.beta = beta
        self.buffers: dict[str, Tensor] = {}

    def update(self, g_f: Tensor, g_g: Tensor) -> tuple[Tensor, Tensor]:
        out = []
        for key, grad in (("f", g_f), ("g", g_g)):
            grad = grad.to(torch.float32)
            buf = self.buffers.get(key)
            buf = grad.clone() if buf is None else buf.mul_(self.beta).add_(grad)
            self.buffers[key] = buf
            out.append(grad + self.beta * buf)
        return out[0], out[1]


class _RotatingSignal:
    """U(t) diag(1/i) V(t)^T of rank r: U(t) = U0 cos(rate t) + U1 sin(rate t) stays orthonormal because U0
    and U1 span orthogonal subspaces; likewise V(t)."""

    def __init__(self, m: int, n: int, rank: int, rate: float, gen: torch.Generator) -> None:
        left = torch.linalg.qr(torch.randn(m, 2 * rank, generator=gen, dtype=torch.float64)).Q
        right = torch.linalg.qr(torch.randn(n, 2 * rank, generator=gen, dtype=torch.float64)).Q
        self.left, self.right, self.rank, self.rate = left, right, rank, rate
        self.sigma = 1.0 / torch.arange(1, rank + 1, dtype=torch.float64)

    def at(self, step: int) -> Tensor:
        c, s = math.cos(self.rate * step), math.sin(self.rate * step)
        r = self.rank
        u = c * self.left[:, :r] + s * self.left[:, r:]
        v = c * self.right[:, :r] + s * self.right[:, r:]
        return (u * self.sigma) @ v.mT


def drifting_stream(
    m: int,
    n: int,
    steps: int,
    rank: int = 16,
    rate: float = 0.05,
    noise: float = 1.0,
    tau: float = -0.6,
    beta: float = 0.95,
    seed: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Nesterov momenta (M_f, M_g) of a gradient stream in conflict, one pair per step, float32 on CPU.

    Each gradient is a rank-`rank` signal whose singular vectors rotate by `rate` radians per step, plus
    Gaussian noise with `noise` times the signal's Frobenius norm; g's signal is tau * f's plus an
    independent rotating signal, so the momenta conflict (alignment ~ tau). With K above the signal's
    rank, the momenta's top-K subspaces reach into the noise bulk, whose top directions change by
    ~sqrt(1 - beta^2) per step: the hard case for a warm start."""
    gen = torch.Generator().manual_seed(seed)
    signal_f = _RotatingSignal(m, n, rank, rate, gen)
    other = _RotatingSignal(m, n, rank, rate, gen)
    momenta = NesterovMomenta(beta)
    for step in range(steps):
        s_f = signal_f.at(step)
        s_g = tau * s_f + math.sqrt(1.0 - tau**2) * other.at(step)
        grads = []
        for signal in (s_f, s_g):
            z = torch.randn(m, n, generator=gen, dtype=torch.float64)
            grads.append(signal + noise * signal.norm() * z / z.norm())
        yield momenta.update(*grads)


TRAINING_BLOCKS = (
    "model.layers.4.self_attn.q_proj.weight",
    "model.layers.4.self_attn.k_proj.weight",
    "model.layers.4.self_attn.o_proj.weight",
    "model.layers.4.mlp.up_proj.weight",
    "model.layers.4.mlp.down_proj.weight",
)
"""One block per SmolLM2 shape (576x576, 192x576, 1536x576, 576x1536) in the middle steered layer."""

TRAINABLE = r"layers\.(3|4|5)\.(self_attn|mlp)\.\w+_proj"


def training_streams(
    steps: int = 40,
    blocks: Sequence[str] = TRAINING_BLOCKS,
    device: str = "auto",
) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Per training step, {block name: (G_f, G_g)}: the gradients each objective produced for the block.

    Trains SmolLM2-135M-Instruct on the `unlearning_cpu` preset (SIFT, its lr, eps and K, the demo's
    offline forget/retain texts) with every projection of layers 3-5 trained, so each block's momenta
    follow a real run from step 1, early fast-moving phase included. The gradients are read as the
    optimizer captures them (after accumulation), never from optimizer internals."""
    from sift_cli.demo.run import write_demo_data
    from sift_cli.spec import resolve_spec
    from sift_cli.store.rundir import RunDir
    from sift_cli.training.launch import make_accelerator
    from sift_cli.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="sift-streams-") as tmp:
        data, _ = write_demo_data(Path(tmp) / "data")
        spec = resolve_spec(
            app="unlearning",
            preset="unlearning_cpu",
            overrides={"data.path": str(data), "output": str(Path(tmp) / "run"), "train.steps": steps, "train.device": device},
            assignments=[f"train.trainable={TRAINABLE}"],
        )
        run_path = Path(tmp) / "run"
        trainer = Trainer(spec, RunDir(run_path), Console(quiet=True), make_accelerator(spec, run_path))
        trainer.distribute()
        params = dict(trainer.named)
        missing = [name for name in blocks if name not in params]
        if missing:
            raise ValueError(f"blocks {missing} are not trained by the stream's run")
        captured: dict[str, dict[str, Tensor]] = {"f": {}, "g": {}}
        capture = trainer.optimizer.capture

        def recording_capture(objective: str) -> None:
            for name in blocks:
                captured[objective][name] = params[name].grad.detach().to(torch.float32, copy=True)
            capture(objective)

        trainer.optimizer.capture = recording_capture  # type: ignore[method-assign]
        while trainer.step < steps:
            trainer.train_step()
            yield {name: (captured["f"][name], captured["g"][name]) for name in blocks}
