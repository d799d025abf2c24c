"""MAML (second order), first-order MAML and T-net: plain SGD steps on W and b."""
from pipeline.core.rules.base import UpdateRule, register


class MAML(UpdateRule):
    name = "maml"


class FirstOrderMAML(UpdateRule):
    name = "fomaml"
    first_order = True


class TNet(UpdateRule):
    """T-net: every cell computes T (W x + b) with T meta-learned (identity init), never adapted."""

    name = "tnet"
    t_cells = True


register(MAML())
register(FirstOrderMAML())
register(TNet())
