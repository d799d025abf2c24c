"""Update-rule registry. Each module in this package registers its method(s) on import, so adding
a method is adding one module."""
import importlib
import pkgutil

from pipeline.core.rules.base import RULES, UpdateRule, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

METHODS = tuple(sorted(RULES))


def get_rule(name: str) -> UpdateRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; allowed: {', '.join(METHODS)}") from None


def step_label(method: str, alpha: float) -> str:
    """'adam (lr 0.3)', 'l2l (output scale 0.1)': a method with its alpha, named as the rule means it."""
    return f"{method} ({get_rule(method).alpha_name} {alpha:g})"


__all__ = ["METHODS", "RULES", "UpdateRule", "get_rule", "register", "step_label"]
