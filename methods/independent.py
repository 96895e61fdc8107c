"""Independent ensemble: the baseline with no interaction between members.

N members with their own initialisations and data orders train separately; the trainer reports
the members, their ensemble and the naive uniform average, which from different inits usually
collapses toward chance (different loss basins). That collapse is an expected result.
Communication: 0.
"""

from wab.method import Method, register


@register("independent")
class Independent(Method):
    """No hooks: nothing is exchanged, and the final model is the uniform average. With
    population.size=1 it is the single model (e.g. trained for N times the steps: the baseline at
    an N-member population's training FLOPs)."""

    min_members = 1
