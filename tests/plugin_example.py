"""A method written only against docs/methods.md ("Adding a method"), as a third party would,
knowing nothing of where members live: each member keeps a running average of its own weights
(per member, no communication), every ``every`` steps the members are pulled ``pull`` of the way
to their mean (a collective), and it delivers the mean of the members' running averages.
``python tests/plugin_example.py <wab train overrides>`` (or under torchrun) trains with it."""

import sys

import torch

from wab.cli import main
from wab.method import MemberRows, MemberValues, Method, register


@register("plugin_example")
class PluginExample(Method):
    """Per-member running averages, a periodic pull to the mean, the mean of the averages."""

    hyperparameters = {"every": 4, "pull": 0.5}

    def setup(self, run):
        self.every, self.pull = int(self.cfg.get("every", 4)), float(self.cfg.get("pull", 0.5))
        self.averages = [p.detach().clone() for p in run.population.params]  # rows of the members held here
        self.count = 0

    @torch.no_grad()
    def after_step(self, run):
        if run.step % self.every == 0:
            run.population.lerp_toward_mean(self.pull)
        self.count += 1
        for avg, p in zip(self.averages, run.population.params):
            avg.lerp_(p, 1.0 / self.count)

    def finalize(self, run):
        pop = run.population
        norms = [float(sum(a[k].norm() ** 2 for a in self.averages)) for k in range(len(pop.members))]
        run.reports["average_sq_norms"] = MemberValues(norms)  # reported as one per member of the population
        _, buffers = pop.mean(record=False)
        return {"mean_of_averages": pop.model_from([pop.mean_rows(a) for a in self.averages], buffers)}

    def state_dict(self, run):
        return {"averages": [MemberRows(a) for a in self.averages], "count": self.count}

    def load_state_dict(self, run, state):
        for avg, saved in zip(self.averages, state["averages"]):
            avg.copy_(saved.rows)
        self.count = int(state["count"])


if __name__ == "__main__":
    sys.exit(main(["train", "method=plugin_example", *sys.argv[1:]]))
