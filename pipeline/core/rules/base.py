"""The update-rule interface and the registry that maps a method name to its rule."""
from __future__ import annotations

import torch

from pipeline.core.learners import FAST_ROLES, Network

RULES: dict[str, UpdateRule] = {}


def register(rule: UpdateRule) -> UpdateRule:
    """Add a rule under its name. The name must be the rule's own (set by its class or its
    instance, not inherited from a base class) and not taken: a subclass that forgets `name`
    would otherwise silently replace the rule it derives from."""
    cls = type(rule)
    own = "name" in vars(rule) or "name" in vars(cls)
    if not own or not isinstance(rule.name, str) or not rule.name:
        inherited = next((c.__name__ for c in cls.__mro__[1:] if "name" in vars(c)), None)
        raise TypeError(f"register: rule class {cls.__module__}.{cls.__qualname__} has no `name` of its own"
                        + (f" (it would inherit {rule.name!r} from {inherited})" if inherited and rule.name else "")
                        + "; set name = '<method>' on the class")
    if rule.name in RULES:
        other = type(RULES[rule.name])
        raise ValueError(f"register: method name {rule.name!r} of {cls.__module__}.{cls.__qualname__} is already "
                         f"registered by {other.__module__}.{other.__qualname__}; choose another name")
    RULES[rule.name] = rule
    return rule


class UpdateRule:
    """An inner-loop rule: p' = p - step(p, grad). Subclasses override only what differs.

    t_cells: cells carry a meta-learned T (T-net, MT-net).
    first_order: the inner gradient is treated as a constant in the outer gradient.
    """

    name = ""  # every registered rule sets its own (checked by register)
    # the method family (pipeline/driver/families.py): "few_shot", or "optimizer" for rules that
    # train optimizees (pipeline/shards/optimizer_experiment.py); and the task kinds (tasks.KINDS) it trains on
    family = "few_shot"
    trains_on = ("regression", "images")
    alpha_name = "inner step size"  # what the config's alpha means for this rule (in tables and figures)
    figures: tuple[str, ...] = ()  # rule-specific figures of a finished run (pipeline/driver/families.py)
    t_cells = False
    first_order = False
    masked = False
    # meta-test batch-norm statistics of the query set when eval.query_bn is "": its own batch
    # (reference MAML) unless the method's paper says otherwise (Meta-LSTM: support averages)
    query_bn = "batch"

    def init_meta(self, net: Network, params: dict, generator: torch.Generator) -> dict:
        """Meta-only parameters the rule adds (step sizes, mask logits, curvature matrices)."""
        return {}

    def noise_shapes(self, params: dict) -> dict[str, tuple[int, ...]]:
        """Shapes of per-task logistic noise the rule needs (drawn in each task's own stream)."""
        return {}

    def task_state(self, params: dict, noise: dict, temperature: float, mask_mode: str) -> dict:
        """Per-task quantities fixed for all inner steps of a task (sampled masks)."""
        return {}

    fast_roles = FAST_ROLES  # parameter roles adapted in the inner loop

    def fast_keys(self, params: dict) -> list[str]:
        return [k for k in params if k.rsplit(".", 1)[1] in self.fast_roles]

    def step(self, key: str, grad: torch.Tensor, params: dict, state: dict, alpha: float) -> torch.Tensor:
        return alpha * grad

    def init_carry(self, params: dict, fast: dict) -> dict:
        """Recurrent state a rule carries from one inner step to the next (none for SGD-like rules)."""
        return {}

    def update(self, fast: dict, grads: dict, loss: torch.Tensor, params: dict, state: dict, carry: dict,
               alpha: float) -> tuple[dict, dict]:
        """One inner step: (new fast weights, new carry). SGD-like rules move each tensor by step()."""
        return {k: fast[k] - self.step(k, grads[k], params, state, alpha) for k in fast}, carry

    def updated_fraction(self, params: dict) -> dict[str, float] | None:
        """Expected fraction of weights updated per cell and overall (masked rules only)."""
        return None
