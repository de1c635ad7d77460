"""`sift` under a launcher, for the distributed tests: `torchrun ... tests/distributed_driver.py train ...`.

With SIFT_TEST_KILL_AT=N, rank 0 kills itself (SIGKILL) right after writing the checkpoint of step N,
which is how a node failure looks to the other ranks and to the launcher."""

from __future__ import annotations

import os
import signal
import sys

import torch

from sift_cli.training.trainer import Trainer
from sift_cli.cli import main

torch.set_num_threads(1)
kill_at = int(os.environ.get("SIFT_TEST_KILL_AT", "0"))
save = Trainer.save_checkpoint


def save_then_die(self: Trainer) -> None:
    save(self)
    if self.step == kill_at and self.ranks.main:
        os.kill(os.getpid(), signal.SIGKILL)


Trainer.save_checkpoint = save_then_die
sys.argv = ["sift", *sys.argv[1:]]
main()
