"""The update-rule registry refuses a rule without a name of its own and a name already taken."""
import pytest

from pipeline.core.rules import RULES, UpdateRule, register
from pipeline.core.rules.maml import MAML
from pipeline.core.rules.masked import Masked


def test_a_rule_class_without_its_own_name_is_refused():
    before = dict(RULES)

    class FirstOrderVariant(MAML):  # forgot `name`: would inherit "maml" and replace MAML
        first_order = True

    with pytest.raises(TypeError, match=r"FirstOrderVariant has no `name` of its own \(it would inherit 'maml' "
                                        r"from MAML\); set name = '<method>' on the class"):
        register(FirstOrderVariant())

    class Bare(UpdateRule):
        pass

    with pytest.raises(TypeError, match="Bare has no `name` of its own; set name"):
        register(Bare())
    assert RULES == before and type(RULES["maml"]) is MAML


def test_a_duplicate_name_is_refused():
    before = dict(RULES)

    class AnotherMAML(UpdateRule):
        name = "maml"

    with pytest.raises(ValueError, match=r"method name 'maml' of .*AnotherMAML is already registered by "
                                         r"pipeline.core.rules.maml.MAML; choose another name"):
        register(AnotherMAML())
    with pytest.raises(ValueError, match="method name 'mtnet' .* already registered"):
        register(Masked("mtnet", full=False, t_cells=True))  # instance-named rules are checked too
    assert RULES == before


def test_a_new_rule_with_its_own_name_registers():
    class Custom(UpdateRule):
        name = "test_custom_rule"

    try:
        assert register(Custom()) is RULES["test_custom_rule"]
    finally:
        RULES.pop("test_custom_rule", None)
    assert {"maml", "fomaml", "tnet", "metasgd", "mnet", "mtnet", "mc1", "mc2", "metalstm"} <= set(RULES)
