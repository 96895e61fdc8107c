"""WASH+Opt (Fournier et al., 2024): WASH whose shuffle also moves each element's optimizer state
(SGD momentum; AdamW's two moments) with the element, so a weight and its state stay together.
Communication: WASH's count times (1 + the number of state tensors)."""

from wab.method import register
from wab.methods.wash import Wash


@register("wash_opt")
class WashOpt(Wash):
    """WASH with the optimizer state permuted alongside the parameters."""

    move_optimizer_state = True
