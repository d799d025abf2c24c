"""A quick probe of the learned optimizer's recipe on MNIST optimizees: meta-train in one process
(one thread, no Ray, no MLflow) from the shipped l2l_mnist_cpu config with a few settings changed,
and evaluate the learned optimizer on 20 fresh test optimizees every 150 meta-iterations (and the
tuned NAG and Adam at the end). The same unrolls, meta-gradients and Adam steps as `metatrain
train` with meta_batch_size optimizees on one worker; small evaluations, for choosing a recipe,
not for the result tables (those come from `metatrain train` runs on 100 optimizees).

    python benchmarks/l2l_probe.py --iterations 150 [--forget-bias 0] [--alpha 0.01] [--beta 0.01]
        [--meta-batch 2] [--schedule constant|cosine] [--objective sum|log|unroll] [--p 10]
        [--preprocess paper|reference] [--init pytorch|reference] [--compile never|always]

Every evaluation is printed twice: on the test split's optimizees (EVAL) and on fresh optimizees of
the training split (EVAL-train).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.core.rules import learned_optimizer  # noqa: E402
from pipeline.driver.families import make_source  # noqa: E402

SPLITS = (("test", "EVAL"), ("train", "EVAL-train"))  # the optimizees evaluated on, and their log tag


def evaluate(exp, params, name, alpha, split="test"):
    final, curve = exp.eval_shard(params, list(range(20)), optimizer=name, alpha=alpha, seed=987, split=split,
                                  steps=100)
    return round(final.mean().item(), 4), [round(curve[:, s].mean().item(), 3) for s in (25, 50, 75, 100)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--forget-bias", type=float, default=learned_optimizer.FORGET_BIAS)
    ap.add_argument("--p", type=float, default=learned_optimizer.PREPROCESS_P, help="preprocessing's p")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--meta-batch", type=int, default=2)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                    help="beta over the iterations: constant, or cosine decay to 0")
    ap.add_argument("--objective", choices=("sum", "log", "unroll"), default="sum",
                    help="meta-loss over an unroll: the paper's sum_t f_t, or sum_t log f_t (weighs late steps as "
                         "much as early ones), or sum_t f_t / f_first (each unroll's sum relative to its first "
                         "step's loss: every unroll weighs alike)")
    ap.add_argument("--preprocess", choices=("paper", "reference"), default="paper",
                    help="the gradient's preprocessing: the paper's appendix (log|g|/p, sgn g), or the reference "
                         "code's LogAndSign (max(log|g|/p, -1), clip(e^p g, -1, 1)), with --p")
    ap.add_argument("--init", choices=("pytorch", "reference"), default="pytorch",
                    help="biases: PyTorch's LSTM init (every bias U(-1/sqrt(H), 1/sqrt(H))), or the reference "
                         "code's (gate and output biases 0, forget-gate bias 1)")
    ap.add_argument("--compile", choices=("always", "never"), default="never")
    args = ap.parse_args()
    torch.set_num_threads(1)
    learned_optimizer.FORGET_BIAS, learned_optimizer.PREPROCESS_P = args.forget_bias, args.p
    if args.preprocess == "reference":
        def log_and_sign(g, p):
            return torch.stack([(g.abs() + 1e-12).log().div(p).clamp(min=-1), (g * math.exp(p)).clamp(-1, 1)], -1)
        learned_optimizer.preprocess = log_and_sign
    cfg = load_config("l2l_mnist_cpu", {"alpha": args.alpha, "beta": args.beta, "train.compile": args.compile,
                                        "backend": "local", "tracking.enabled": False})
    exp = make_source(cfg)
    if args.objective == "log":
        exp.objective = lambda losses: torch.stack(losses, 0).log().sum(0)
    if args.objective == "unroll":
        exp.objective = lambda losses: torch.stack(losses, 0).sum(0) / losses[0].detach()
    params = exp.init_params()
    if args.init == "reference":
        for k in ("l2l.b0", "l2l.b1", "l2l.b_out"):
            params[k].zero_()
        for k in ("l2l.b0", "l2l.b1"):
            params[k][20:40] = 1.0  # gate order i, f, g, o
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=args.beta)
    carry, t0, mb = None, time.time(), args.meta_batch
    print(json.dumps(vars(args)), flush=True)
    for it in range(args.iterations):
        r = exp.train_shard({k: v.detach() for k, v in params.items()}, it, list(range(mb)), carry)
        carry = r.carry  # none after a trajectory's last unroll
        for k, v in params.items():
            v.grad = r.grads[k] / mb
        if args.schedule == "cosine":
            opt.param_groups[0]["lr"] = args.beta * 0.5 * (1 + math.cos(math.pi * it / args.iterations))
        opt.step()
        if it % 25 == 0:
            print(f"iteration {it} meta-loss {r.loss_sum / mb:.3f} ({time.time() - t0:.0f} s)", flush=True)
        if (it + 1) % 150 == 0:
            for split, tag in SPLITS:
                final, at = evaluate(exp, {k: v.detach() for k, v in params.items()}, "l2l", args.alpha, split)
                print(f"{tag} after {it + 1}: l2l final loss {final} (loss at step 25/50/75/100: {at})", flush=True)
    for name, alpha in (("nag", 1.0), ("adam", 0.03)):
        for split, tag in SPLITS:
            final, at = evaluate(exp, {}, name, alpha, split)
            print(f"{tag} {name} (lr {alpha}): final loss {final} (loss at step 25/50/75/100: {at})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
