"""Meta-Curvature (Park & Oliva 2019): the inner gradient is transformed by learned matrices.

For a weight gradient G of shape (C_out, C_in, d) (d = kh*kw for conv, 1 for dense):
MC(G) = G x3 M_f x2 M_i x1 M_o, all identity-initialised; bias gradients are scaled elementwise.
MC1 keeps M_o = I fixed; MC2 learns all three. p' = p - alpha MC(grad).
"""
import torch

from pipeline.core.rules.base import UpdateRule, register


class MetaCurvature(UpdateRule):
    def __init__(self, name: str, learn_output: bool):
        self.name, self.learn_output = name, learn_output

    def init_meta(self, net, params, generator):
        meta = {}
        for key in self.fast_keys(params):
            p = params[key]
            if key.endswith(".b"):
                meta[f"{key}_mc"] = torch.ones_like(p)
                continue
            c_out, c_in, d = p.shape[0], p.shape[1], p[0, 0].numel()
            if self.learn_output:
                meta[f"{key}_mc_out"] = torch.eye(c_out, dtype=p.dtype)
            meta[f"{key}_mc_in"] = torch.eye(c_in, dtype=p.dtype)
            meta[f"{key}_mc_filter"] = torch.eye(d, dtype=p.dtype)
        return meta

    def step(self, key, grad, params, state, alpha):
        if key.endswith(".b"):
            return alpha * params[f"{key}_mc"] * grad
        g = grad.reshape(grad.shape[0], grad.shape[1], -1)
        g = torch.einsum("Ii,Ff,oif->oIF", params[f"{key}_mc_in"], params[f"{key}_mc_filter"], g)
        if self.learn_output:
            g = torch.einsum("Oo,oif->Oif", params[f"{key}_mc_out"], g)
        return alpha * g.reshape(grad.shape)


register(MetaCurvature("mc1", learn_output=False))
register(MetaCurvature("mc2", learn_output=True))
