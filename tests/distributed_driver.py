"""`sift` under a launcher, for the distributed tests: `torchrun ... tests/distributed_driver.py train ...`.

With SIFT_TEST_KILL_AT=N, rank 0 kills itself (SIGKILL) right after writing the checkpoint of step N,
which is how a node failure looks to the other ranks and to the launcher. With SIFT_TEST_TERM_AT=N, rank
0 sends SIGTERM to the launcher after step N, which forwards it to every rank: how a scheduler stops a job."""

from __future__ import annotations

import os
import signal
import sys

import torch

from sift_cli.cli import main
from sift_cli.training.trainer import Trainer

torch.set_num_threads(1)
kill_at = int(os.environ.get("SIFT_TEST_KILL_AT", "0"))
term_at = int(os.environ.get("SIFT_TEST_TERM_AT", "0"))
save = Trainer.save_checkpoint
step = Trainer.train_step


def save_then_die(self: Trainer) -> None:
    save(self)
    if self.step == kill_at and self.ranks.main:
        os.kill(os.getpid(), signal.SIGKILL)


def step_then_stop_the_launcher(self: Trainer):
    out = step(self)
    if self.step == term_at and self.ranks.main:
        os.kill(os.getppid(), signal.SIGTERM)
    return out


Trainer.save_checkpoint = save_then_die
Trainer.train_step = step_then_stop_the_launcher
sys.argv = ["sift", *sys.argv[1:]]
main()
