"""M-net, M-net-full, MT-net, MT-net-full: SGD restricted by a Gumbel straight-through mask.

Per cell, logits zeta (one per output unit, or one per weight element in the "-full" variants).
A binary mask is sampled once per task from the two-logit Gumbel-softmax [zeta, 0] at temperature
c: s = sigmoid((zeta + g1 - g2) / c), m = 1[s > 1/2] forward, ds backward (straight through), so
P(m = 1) = sigmoid(zeta). Row j of W and b_j share m_j in the per-unit variants.
"""
import torch

from pipeline.core.learners import broadcast_rows, cell_of
from pipeline.core.rules.base import UpdateRule, register

MASK_MODES = ("sample", "argmax")


def straight_through_mask(zeta: torch.Tensor, noise: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Hard 0/1 mask in the forward pass, gradient of the soft sample in the backward pass.
    noise=None gives the most probable mask (zeta > 0)."""
    s = torch.sigmoid((zeta if noise is None else zeta + noise) / temperature)
    hard = (s > 0.5).to(s.dtype)
    return hard + (s - s.detach())  # value is exactly `hard`; gradient is ds/dzeta


class Masked(UpdateRule):
    masked = True

    def __init__(self, name: str, full: bool, t_cells: bool):
        self.name, self.full, self.t_cells = name, full, t_cells

    def _logit_key(self, key: str) -> str:
        # Per-unit: W and b of a cell share one logit vector; full: one logit per element.
        return f"{key}_zeta" if self.full else f"{cell_of(key)}.zeta"

    def init_meta(self, net, params, generator):
        keys = self.fast_keys(params)
        if self.full:
            return {self._logit_key(k): torch.zeros_like(params[k]) for k in keys}
        return {self._logit_key(k): torch.zeros_like(params[k]) for k in keys if k.endswith(".b")}

    def noise_shapes(self, params):
        return {k: tuple(v.shape) for k, v in params.items() if k.endswith("zeta")}

    def task_state(self, params, noise, temperature, mask_mode):
        if mask_mode not in MASK_MODES:
            raise ValueError(f"eval.mask: unknown mode {mask_mode!r}; allowed: {', '.join(MASK_MODES)}")
        return {k: straight_through_mask(params[k], noise[k] if mask_mode == "sample" else None, temperature)
                for k in self.noise_shapes(params)}

    def step(self, key, grad, params, state, alpha):
        return alpha * broadcast_rows(state[self._logit_key(key)], grad) * grad

    def updated_fraction(self, params):
        logits = {k: v for k, v in params.items() if k.endswith("zeta")}
        per_cell: dict[str, list[torch.Tensor]] = {}
        for k, v in logits.items():
            per_cell.setdefault(cell_of(k), []).append(torch.sigmoid(v.detach()).flatten())
        out = {cell: torch.cat(vs).mean().item() for cell, vs in per_cell.items()}
        out["overall"] = torch.cat([torch.sigmoid(v.detach()).flatten() for v in logits.values()]).mean().item()
        return out


register(Masked("mnet", full=False, t_cells=False))
register(Masked("mnet_full", full=True, t_cells=False))
register(Masked("mtnet", full=False, t_cells=True))
register(Masked("mtnet_full", full=True, t_cells=True))
