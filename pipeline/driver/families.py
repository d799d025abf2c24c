"""One object per method family: what the driver, tracking and sweeps ask of a family is answered
here and nowhere else - its shard source, metric and labels, evaluation plan, figures, whether a
model is logged, when train.compile: auto applies, and whether members can pack into a population.
A rule names its family (UpdateRule.family); adding a family is a new `Family` here (and its shard
source in pipeline/shards)."""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.core.rules import get_rule
from pipeline.driver.evaluation import curve_ci95, eval_ranges, evaluate, finite_or_none, table_row
from pipeline.shards.compiled import ExecutionPlan
from pipeline.shards.experiment import Experiment
from pipeline.shards.optimizer_experiment import OptimizerExperiment


class Family:
    name = ""
    source = Experiment  # the shard source class (built in this process, and by Ray workers from a config)
    times_chunks = False  # train.tasks_per_vmap: auto is timed on the first shard
    packs = False  # runs that differ in alpha/beta/temperature/seeds train as one population
    logs_model = False  # MLflow logs the meta-learned network (mlflow.pytorch.log_model and a pyfunc)
    curve_label = ("before adaptation", 0)  # the progress line's second loss: label, index in the curve

    def plan(self, cfg) -> ExecutionPlan:
        """How a run of this family computes (train.compile resolved: "auto" from the source's
        compile_auto_from iterations), as its shard source resolves it."""
        return ExecutionPlan.of(cfg, self.source.compile_auto_from)

    def final_metrics(self, cfg, methods: list[str], shots: list[int]) -> list[str]:
        """The names of a run's final evaluation metrics (Tune and MLflow), for a sweep's `metric`."""
        raise NotImplementedError

    def evaluate(self, experiment, backend, params: dict, cfg, *, tasks: int, shots: list[int], seed: int) -> dict:
        """The run's evaluation table: {row: {mean, ci95, n, before_adaptation, ...}}."""
        raise NotImplementedError

    def validate(self, backend, params: dict, cfg) -> float:
        """train.validate_every: the validation loss of the current parameters (lower is better)."""
        raise NotImplementedError(f"train.validate_every: the {self.name} family has no validation set")

    def header(self, results: dict, experiment) -> str:
        raise NotImplementedError

    def figures(self, record, entries: list[dict], out: Path, results: dict | None) -> list[Path]:
        raise NotImplementedError


class FewShot(Family):
    """Gradient-based few-shot learners: adapt to a task's support set, scored on its query set."""

    name = "few_shot"
    source = Experiment
    times_chunks = packs = logs_model = True

    def final_metrics(self, cfg, methods, shots):
        return [f"eval_K{k}_mean" for k in shots]

    def evaluate(self, experiment, backend, params, cfg, *, tasks, shots, seed):
        e = cfg.eval
        return evaluate(backend, params, tasks=tasks, shots=shots, seed=seed, inner_steps=e.inner_steps,
                        mask_mode=e.mask, batch_size=e.batch_size, eval_split=e.split)

    def header(self, results, experiment):
        e = results["eval"]
        masked = f", mask={e['mask']}" if experiment.rule.masked else ""
        frac = results["updated_fraction"]
        frac_txt = f", fraction of weights updated {frac['overall']:.3f}" if frac else ""
        split = "" if e.get("split", "test") == "test" else f" of the {e['split']} split"
        return (f"{results['method']} on {results['task']} ({results['status']}, {results['iterations']} iterations"
                f"{frac_txt}): {e['tasks']} test tasks{split}, {e['inner_steps']} inner step(s){masked}")

    def figures(self, record, entries, out, results):
        from pipeline import plots  # matplotlib: imported only when a run ends

        cfg, exp = record.cfg, record.experiment
        title = f"{cfg.method} on {cfg.task.name}"
        classification = exp.learner.net.loss != "mse"
        paths = []
        if any("meta_loss" in e for e in entries):
            paths.append(plots.learning_curves(entries, out / "learning_curves.png", title, classification))
        final = exp.learner.rule.updated_fraction(record.params)
        if final is not None:
            paths.append(plots.updated_fraction(entries, final, out / "updated_fraction.png", title))
        if not classification and hasattr(exp.distribution, "target"):
            paths.append(plots.regression_adaptation(record, out / "adaptation.png"))
        if "gates" in exp.learner.rule.figures and cfg.eval.inner_steps > 0:
            paths.append(plots.meta_lstm_gates(record, out / "gates.png"))
        return paths


class LearnedOptimizers(Family):
    """Learned optimizers (Andrychowicz et al. 2016) and the hand-designed baselines they are compared
    with: train optimizees; scored by the optimizee's final loss."""

    name = "optimizer"
    source = OptimizerExperiment
    curve_label = ("optimizee loss at unroll end", -1)

    def final_metrics(self, cfg, methods, shots):  # a final metric per evaluated optimizer
        return [f"eval_{m}_mean" for m in dict.fromkeys([*methods, *cfg.eval.baselines])]

    @staticmethod
    def optimizers(cfg) -> dict[str, float]:
        """Every optimizer the evaluation compares: this run's method, then the baselines."""
        return {cfg.method: cfg.alpha, **{k: v for k, v in cfg.eval.baselines.items() if k != cfg.method}}

    def evaluate(self, experiment, backend, params, cfg, *, tasks, shots, seed):
        """{optimizer: {mean, ci95, n, before_adaptation, query_loss_per_step, curve_ci95, per_task, alpha}}
        on optimizees 0..tasks-1 of the evaluation set; every optimizer sees the same optimizees and
        minibatches (eval.inner_steps is each trajectory's horizon)."""
        e = cfg.eval
        chunks = eval_ranges(tasks, e.batch_size, backend.eval_spread)
        results = {}
        for name, alpha in self.optimizers(cfg).items():
            row, curve = table_row(backend, params, chunks, optimizer=name, alpha=alpha, seed=seed, split=e.split,
                                   steps=e.inner_steps)
            results[name] = {**row, "alpha": alpha, "curve_ci95": [finite_or_none(float(v)) for v in curve_ci95(curve)]}
        return results

    def validate(self, backend, params, cfg):
        """train.validate_every: the learned optimizer's mean final loss on train.validate_tasks
        optimizees of the validation split (the training images, streams of their own), over the
        training horizon - with train.meta_loss: heldout, their loss on the data each never trained
        on, the measure the run's meta-objective and headline use; inf if not finite."""
        chunks = eval_ranges(cfg.train.validate_tasks, cfg.eval.batch_size, backend.eval_spread)
        row, _ = table_row(backend, params, chunks, optimizer=cfg.method, alpha=cfg.alpha, seed=cfg.seed, split="val",
                           steps=cfg.inner_steps)
        score = row["unseen"]["mean"] if cfg.train.meta_loss == "heldout" else row["mean"]
        return math.inf if score is None else score

    def header(self, results, experiment):
        e = results["eval"]
        split = "" if e.get("split", "test") == "test" else f" of the {e['split']} split"
        return (f"{results['method']} on {results['task']} ({results['status']}, {results['iterations']} iterations):"
                f" {e['tasks']} fresh optimizees{split}, {e['inner_steps']} steps each")

    def figures(self, record, entries, out, results):
        from pipeline import plots  # matplotlib: imported only when a run ends

        title = f"{record.cfg.method} on {record.cfg.task.name}"
        paths = []
        if any("meta_loss" in e for e in entries):
            paths.append(plots.optimizer_training(entries, out / "learning_curves.png", title))
        if results:
            paths.append(plots.optimizer_comparison(results["results"], out / "optimizee_loss.png", title=title,
                                                    y_label=record.experiment.distribution.loss_name))
        return paths


FAMILIES = {f.name: f for f in (FewShot(), LearnedOptimizers())}


def family_of(method: str) -> Family:
    """The family of a method (a config's `method`)."""
    return FAMILIES[get_rule(method).family]


def make_source(cfg, dtype=None, device: str = "cpu"):
    """The shard source of a config's method family, built in this process (float32 unless `dtype`)."""
    source = family_of(cfg.method).source
    return source(cfg, device=device) if dtype is None else source(cfg, dtype, device)
