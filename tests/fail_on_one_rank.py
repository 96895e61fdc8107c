"""A distributed run whose process RANK raises at step STEP (a plugin that fails on one rank
only): ``torchrun ... tests/fail_on_one_rank.py RANK STEP <wab train overrides>``; RANK -1 trains
without failing (the relaunch). Exits with ``wab train``'s status (tests/test_distributed.py)."""

import sys

import torch.distributed as dist

from wab.cli import main
from wab.method import Method, register


@register("test_fails_on_one_rank")
class FailsOnOneRank(Method):
    rank, step = int(sys.argv[1]), int(sys.argv[2])

    def after_step(self, run):
        if dist.get_rank() == self.rank and run.step == self.step:
            raise OSError(f"disk full on rank {self.rank} at step {run.step}")


if __name__ == "__main__":
    sys.exit(main(["train", "method.name=test_fails_on_one_rank", *sys.argv[3:]]))
