"""Training a run directory: `train(spec)` starts or resumes one (transactions.py), the loop steps and
checkpoints it (loop.py, trainer.py, checkpoints.py, state.py) and logs it (records.py), the launch joins the ranks
(launch.py, fsdp.py), plan.py routes the parameters, tracking.py feeds experiment trackers.

The CLI, `sift compare`, the benches and the Python API (`sift_cli.api`) all call these functions."""

from sift_cli.training.checkpoints import latest_checkpoint
from sift_cli.training.trainer import TrainingStopped
from sift_cli.training.transactions import resume_changes, train

__all__ = ["TrainingStopped", "latest_checkpoint", "resume_changes", "train"]
