"""Our study tables beside the thesis's numbers (DESIGN section 4), cell by cell, with the test
each claim rests on.

Reads the report.parquet / trials.parquet that `metatrain report` wrote for each study (copied
here under benchmarks/studies/<study>/) and prints Markdown. Per cell: ours (mean +- 95% CI over
the test tasks, each task's loss averaged over the seeds), each seed's own mean, the between-seed
standard deviation, the thesis's mean +- 95% CI, and four tests from strictest to loosest:
  inside    - our mean lies inside the thesis's 95% interval (two-sided: a mean significantly
              below it is outside too);
  p         - two-sample Welch t-test of the two means from their summary statistics (std =
              ci95 / 1.96 * sqrt(n); n = the report's test tasks on our side, each task's loss
              averaged over the seeds, so seeds do not count as extra samples; 600 on the thesis's);
  not worse - our mean lies inside the thesis's interval or below it (lower MSE is better; one-sided);
  overlap   - the two 95% intervals overlap.
Headlines count by `inside`, the strictest. Rows marked * are the Meta-SGD paper's numbers (Li et
al. 2017) that the thesis's table copies, not runs of the thesis's own protocol.
Usage:  python benchmarks/studies/compare_thesis.py [--dir benchmarks/studies] [--readme FILE]
  --readme: also replace, in FILE, each block between `<!-- compare_thesis: NAME -->` and
  `<!-- /compare_thesis -->` by the section NAME printed here (sine, robustness, subspace,
  gumbel_temperature, beta), so that the quoted tables are generated, not retyped.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy import stats

N_TASKS = 600  # test tasks per cell, ours and the thesis's
FROM_META_SGD_PAPER = {"maml", "metasgd"}
SINE = {  # model -> K -> (mean, ci95)
    "maml": {5: (1.07, 0.11), 10: (0.71, 0.07), 20: (0.50, 0.05)},
    "metasgd": {5: (0.88, 0.14), 10: (0.53, 0.09), 20: (0.35, 0.06)},
    "mnet_full": {5: (0.91, 0.09), 10: (0.63, 0.07), 20: (0.38, 0.04)},
    "mnet": {5: (0.88, 0.09), 10: (0.60, 0.06), 20: (0.41, 0.04)},
    "tnet": {5: (0.83, 0.08), 10: (0.56, 0.06), 20: (0.38, 0.04)},
    "mtnet_full": {5: (0.81, 0.08), 10: (0.51, 0.05), 20: (0.35, 0.04)},
    "mtnet": {5: (0.76, 0.09), 10: (0.49, 0.05), 20: (0.33, 0.04)},
}
ROBUSTNESS = {  # alpha -> method -> (mean, ci95), 10-shot
    10.0: {"maml": (171.92, 25.04), "tnet": (4.08, 0.30), "mtnet": (4.18, 0.30)},
    1.0: {"maml": (5.81, 0.49), "tnet": (4.15, 0.30), "mtnet": (0.61, 0.07)},
    0.1: {"maml": (1.05, 0.11), "tnet": (0.68, 0.06), "mtnet": (0.54, 0.05)},
    0.01: {"maml": (0.71, 0.07), "tnet": (0.56, 0.06), "mtnet": (0.49, 0.05)},
    0.001: {"maml": (0.82, 0.08), "tnet": (0.59, 0.06), "mtnet": (0.59, 0.06)},
    0.0001: {"maml": (2.54, 0.19), "tnet": (0.62, 0.06), "mtnet": (0.72, 0.07)},
}


def cell(m: float, c: float) -> str:
    digits = 1 if abs(m) >= 100 else 2 if abs(m) >= 10 else 3
    return f"{m:.{digits}f} ± {c:.{digits}f}"


def tests(ours: tuple[float, float], ref: tuple[float, float], n: int = N_TASKS) -> dict:
    """inside (two-sided), Welch p, not worse (inside or lower), overlap: ours as (mean, ci95) over
    n test tasks, the thesis's over its 600."""
    (m, c), (r, rc) = ours, ref
    sd = lambda ci, k: ci / 1.96 * math.sqrt(k)  # noqa: E731
    p = stats.ttest_ind_from_stats(m, sd(c, n), n, r, sd(rc, N_TASKS), N_TASKS, equal_var=False).pvalue
    return {"inside": r - rc <= m <= r + rc, "p": float(p), "not_worse": m <= r + rc, "overlap": abs(m - r) <= c + rc}


def seed_means(trials: Path, key: tuple, k: int) -> dict[int, float]:
    """seed -> that trial's mean at K = k, for the trials of one cell (key: column -> value)."""
    out = {}
    for r in pq.read_table(trials).to_pylist():
        if all(r.get(c) == v for c, v in key) and r.get(f"eval_K{k}_mean") is not None:
            out[r["seed"]] = r[f"eval_K{k}_mean"]
    return out


def row(label: list[str], ours, ref, seeds: dict[int, float], all_seeds: list[int],
        n: int = N_TASKS) -> tuple[str, dict]:
    t = tests(ours, ref, n)
    spread = f"{np.std(list(seeds.values()), ddof=1):.3f}" if len(seeds) > 1 else "-"
    per_seed = [cell(seeds[s], 0).split(" ±")[0] if s in seeds else "-" for s in all_seeds]
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    line = (f"| {' | '.join(label)} | {cell(*ours)} | {' | '.join(per_seed)} | {spread} | {cell(*ref)} | "
            f"{yes(t['inside'])} | {t['p']:.2g} | {yes(t['not_worse'])} | {yes(t['overlap'])} |")
    return line, t


def header(first: list[str], all_seeds: list[int]) -> list[str]:
    cols = [*first, "ours (seeds pooled)", *[f"seed {s}" for s in all_seeds], "between-seed SD", "thesis",
            "inside thesis CI", "Welch p", "not worse (inside or lower)", "CIs overlap"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def summary(results: list[dict]) -> str:
    n = len(results)
    inside = sum(t["inside"] for t in results)
    p05 = sum(t["p"] >= 0.05 for t in results)
    overlap = sum(t["overlap"] for t in results)
    not_worse = sum(t["not_worse"] for t in results)
    return (f"**{inside} of {n}** cells have our mean inside the thesis's 95% interval (two-sided: the "
            f"strictest test, the one counted); {p05} of {n} show no significant difference (Welch p >= 0.05); "
            f"{not_worse} of {n} are not worse (inside the interval or below it); {overlap} of {n} have "
            "overlapping intervals.")


def sine_table(study: Path) -> str:
    rows = {(r["method"], r["K"]): r for r in pq.read_table(study / "report.parquet").to_pylist()}
    trials = study / "trials.parquet"
    all_seeds = sorted({r["seed"] for r in pq.read_table(trials).to_pylist()})
    out, results, order = header(["model", "K"], all_seeds), [], {}
    for model, by_k in SINE.items():
        for k, ref in by_k.items():
            r = rows.get((model, k))
            if r and r["mean"] is not None:
                name = model + (" *" if model in FROM_META_SGD_PAPER else "")
                line, t = row([name, str(k)], (r["mean"], r["ci95"]), ref,
                              seed_means(trials, (("method", model),), k), all_seeds, r.get("n") or N_TASKS)
                out.append(line)
                results.append(t)
                order.setdefault(k, []).append((r["mean"], model))
    ours = "; ".join(f"K={k}: " + " < ".join(m for _, m in sorted(v)) for k, v in order.items())
    thesis = "; ".join(f"K={k}: " + " < ".join(sorted(SINE, key=lambda m: SINE[m][k][0])) for k in order)
    return ("\n".join(out) + "\n\n" + summary(results) + "\n\nOrdering by mean MSE, ours: " + ours
            + "\n\nOrdering, thesis: " + thesis)


def robustness_table(study: Path) -> str:
    rows = {(r["alpha"], r["method"]): r for r in pq.read_table(study / "report.parquet").to_pylist() if r["K"] == 10}
    trial_files = [study / "trials.parquet"]
    all_seeds = sorted({r["seed"] for f in trial_files for r in pq.read_table(f).to_pylist()})
    out, results = header(["alpha", "method"], all_seeds), []
    for alpha, by_method in ROBUSTNESS.items():
        for method, ref in by_method.items():
            r = rows.get((alpha, method))
            if r and r["mean"] is not None:
                seeds = {}
                for f in trial_files:
                    seeds.update(seed_means(f, (("method", method), ("alpha", alpha)), 10))
                line, t = row([f"{alpha:g}", method], (r["mean"], r["ci95"]), ref, seeds, all_seeds,
                              r.get("n") or N_TASKS)
                out.append(line)
                results.append(t)
    return "\n".join(out) + "\n\n" + summary(results) + "\n\n" + mtnet_vs_maml(study)


def mtnet_vs_maml(study: Path) -> str:
    """The robustness goal, seed by seed: MT-net's K = 10 mean at or below MAML's at every alpha."""
    trials = [r for r in pq.read_table(study / "trials.parquet").to_pylist() if r.get("eval_K10_mean") is not None]
    by = {(r["method"], r["alpha"], r["seed"]): r["eval_K10_mean"] for r in trials}
    pairs = sorted({(a, s) for m, a, s in by if m == "mtnet" and ("maml", a, s) in by}, key=lambda x: (-x[0], x[1]))
    worse = [f"alpha {a:g} seed {s} ({by[('mtnet', a, s)]:.3f} > {by[('maml', a, s)]:.3f})"
             for a, s in pairs if by[("mtnet", a, s)] > by[("maml", a, s)]]
    return (f"MT-net at or below MAML in {len(pairs) - len(worse)} of {len(pairs)} (alpha, seed) pairs"
            + (f"; above in: {', '.join(worse)}." if worse else "."))


def subspace_table(study: Path) -> str:
    """The subspace study: per (order, alpha) cell, the fraction of weights updated after
    meta-training under both definitions, seeds averaged, with each seed's overall value.
    mask probability (eq. 3.7): mean sigmoid(zeta); the thesis's section 6.3 and the MT-net
    reference's "change probs": mean e^-zeta / (e^-zeta + 1) = mean sigmoid(-zeta) = 1 - the former
    (elementwise, so also for the means)."""
    trials = [r for r in pq.read_table(study / "trials.parquet").to_pylist() if r.get("updated_fraction") is not None]
    report = {(r["task.order"], r.get("alpha")): r for r in pq.read_table(study / "report.parquet").to_pylist()}
    layers = sorted(k.removeprefix("updated_fraction_") for k in trials[0] if k.startswith("updated_fraction_"))
    all_seeds = sorted({r["seed"] for r in trials})
    cols = ["order", "alpha", *[f"{l} sigmoid(ζ)" for l in layers], "overall sigmoid(ζ)",
            *[f"seed {s}" for s in all_seeds], "between-seed SD", "overall sigmoid(-ζ) (thesis 6.3)",
            "post-adaptation MSE, K = 10"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key in sorted({(r["task.order"], r.get("alpha")) for r in trials}, key=lambda k: (k[0], -(k[1] or 0))):
        runs = [r for r in trials if (r["task.order"], r.get("alpha")) == key]
        seeds = {r["seed"]: r["updated_fraction"] for r in runs}
        overall = float(np.mean(list(seeds.values())))
        per_layer = [f"{np.mean([r[f'updated_fraction_{l}'] for r in runs]):.3f}" for l in layers]
        rep = report.get(key)
        mse = cell(rep["mean"], rep["ci95"]) if rep and rep.get("mean") is not None else "-"
        spread = f"{np.std(list(seeds.values()), ddof=1):.3f}" if len(seeds) > 1 else "-"
        value = "-" if key[1] is None else f"{key[1]:g}"
        out.append(f"| {key[0]} | {value} | {' | '.join(per_layer)} | {overall:.3f} | "
                   + " | ".join(f"{seeds[s]:.3f}" if s in seeds else "-" for s in all_seeds)
                   + f" | {spread} | {1 - overall:.3f} | {mse} |")
    return "\n".join(out)


def seed_table(study: Path, keys: list[str], k: int = 10) -> str:
    """A study the thesis gives no numbers for (gumbel_temperature, beta): per cell (values of
    `keys`), ours pooled over the seeds (mean +- 95% CI over the test tasks), each seed's mean, the
    between-seed SD and, for mask models, the fraction of weights updated (mean sigmoid(zeta))."""
    rows = [r for r in pq.read_table(study / "report.parquet").to_pylist() if r["K"] == k]
    trials = [r for r in pq.read_table(study / "trials.parquet").to_pylist() if r.get(f"eval_K{k}_mean") is not None]
    all_seeds = sorted({r["seed"] for r in trials})
    masks = any(r.get("updated_fraction") is not None for r in rows)
    cols = [*keys, f"ours (seeds pooled), K = {k}", *[f"seed {s}" for s in all_seeds], "between-seed SD",
            *(["updated fraction sigmoid(ζ)"] if masks else []), "diverged"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: tuple(str(r[c]) if isinstance(r[c], str) else r[c] for c in keys)):
        seeds = {t["seed"]: t[f"eval_K{k}_mean"] for t in trials if all(t.get(c) == r[c] for c in keys)}
        spread = f"{np.std(list(seeds.values()), ddof=1):.3f}" if len(seeds) > 1 else "-"
        frac = r.get("updated_fraction")
        out.append(f"| {' | '.join(f'{r[c]:g}' if isinstance(r[c], float) else str(r[c]) for c in keys)} | "
                   f"{cell(r['mean'], r['ci95']) if r['mean'] is not None else '-'} | "
                   + " | ".join(f"{seeds[s]:.3f}" if s in seeds else "-" for s in all_seeds)
                   + f" | {spread} |" + (f" {'-' if frac is None else f'{frac:.3f}'} |" if masks else "")
                   + f" {r.get('diverged') or 0} |")
    return "\n".join(out)


def sections(d: Path) -> dict[str, tuple[str, str]]:
    """name -> (title, Markdown) of every study found under d."""
    out = {}
    if (d / "sine_models" / "report.parquet").is_file():
        out["sine"] = ("Sine table", sine_table(d / "sine_models"))
    if (d / "robustness_alpha" / "report.parquet").is_file():
        out["robustness"] = ("Step-size robustness (K = 10)", robustness_table(d / "robustness_alpha"))
    if (d / "polynomial_subspace" / "trials.parquet").is_file():
        out["subspace"] = ("Subspace study: fraction of weights updated", subspace_table(d / "polynomial_subspace"))
    if (d / "gumbel_temperature" / "report.parquet").is_file():
        out["gumbel_temperature"] = ("Gumbel-softmax temperature (MT-net)",
                                     seed_table(d / "gumbel_temperature", ["gumbel_temperature"]))
    if (d / "beta" / "report.parquet").is_file():
        out["beta"] = ("Meta step size beta", seed_table(d / "beta", ["beta", "method"]))
    return out


def fill(readme: Path, found: dict[str, tuple[str, str]]) -> None:
    """Replace each `<!-- compare_thesis: NAME -->` ... `<!-- /compare_thesis -->` block of readme."""
    text = readme.read_text()
    for name, (_, body) in found.items():
        start, end = f"<!-- compare_thesis: {name} -->", "<!-- /compare_thesis -->"
        if start in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).parent))
    ap.add_argument("--readme", default="", help="a Markdown file whose compare_thesis blocks to regenerate")
    args = ap.parse_args()
    found = sections(Path(args.dir))
    for title, body in found.values():
        print(f"## {title}\n\n{body}\n")
    if args.readme:
        fill(Path(args.readme), found)


if __name__ == "__main__":
    main()
