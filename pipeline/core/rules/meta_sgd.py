"""Meta-SGD: a meta-learned step size per parameter element, p' = p - alpha_p * grad."""
import torch

from pipeline.core.rules.base import UpdateRule, register

INIT_RANGE = (0.005, 0.1)


class MetaSGD(UpdateRule):
    name = "metasgd"
    alpha_name = "unused (per-element step sizes are meta-learned)"

    def init_meta(self, net, params, generator):
        return {f"{k}_lr": torch.empty_like(params[k]).uniform_(*INIT_RANGE, generator=generator)
                for k in self.fast_keys(params)}

    def step(self, key, grad, params, state, alpha):
        return params[f"{key}_lr"] * grad


register(MetaSGD())
