"""The driver of one run: Adam outer loop over the batched shard function, resume, and the final
evaluation. Its run's record (pipeline/driver/record.py) keeps the directory, checkpoints, progress
output and plots; tracking (MLflow) and Tune attach as hooks, so this module knows neither."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.distributed.backends import make_backend
from pipeline.driver import checkpoint
from pipeline.driver.families import family_of
from pipeline.driver.hooks import DriverHook, RunHook
from pipeline.driver.meta_step import StackedAdam
from pipeline.driver.record import RunRecord, check_trainable, reported_aborts
from pipeline.storage import StorageError


class Trainer:
    """Owns the meta-parameters and the Adam state of one run; the backend (Ray workers or this
    process) only computes shard sums, the run's RunRecord keeps everything written. Use as a
    context manager to release it.

    Arguments:
        cfg: a validated config (pipeline/config.py: load_config).
        run_dir: the run's folder (created; config.yaml, metrics.jsonl, checkpoints, results.json, plots/).
        log: where progress lines go.
        backend: where shards run (None: cfg.backend's, Ray workers or this process).
        hooks: the run's observers (RunHook: MLflow's tracker).
        reporter: the driver's observer (DriverHook: Tune's reporter).

    Example:
        >>> from pipeline.config import load_config
        >>> cfg = load_config("sine_quick", ["iterations=20", "backend=local"])   # doctest: +SKIP
        >>> with Trainer(cfg, "runs/quick") as trainer:                           # doctest: +SKIP
        ...     results = trainer.train()   # results.json's content: the evaluation table
    """

    def __init__(self, cfg: Config, run_dir: Path, log=print, backend=None, hooks: tuple[RunHook, ...] = (),
                 reporter: DriverHook | None = None):
        self.cfg, self.log = cfg, log
        self.family = family_of(cfg.method)
        self.experiment = self.family.source(cfg)
        self.reporter = reporter or DriverHook()
        self.record = RunRecord(cfg, run_dir, self, log, (*hooks, _Reports(self)), experiment=self.experiment)
        self.record.emit("on_setup")  # before the backend: a hook's own start-up overlaps Ray's
        self.backend = backend or make_backend(cfg, self.experiment, log)
        # The outer step (guard, clip, Adam) is the population's over one row: the same code for a
        # solo run and a member (pipeline/driver/meta_step.py).
        self.adam = StackedAdam.of_run(self.experiment.init_params(), cfg.beta, cfg.train.grad_clip, log)
        self.record.bind(self.adam, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.backend.close()

    # -- the driver's view (RunDriver; DriverHook's `driver`) --------------------------------
    @property
    def params(self) -> dict:
        return self.record.params

    @property
    def iteration(self) -> int:
        return self.record.iteration

    @property
    def base(self) -> Config:
        """The config every run of this driver shares (Population.base's counterpart)."""
        return self.cfg

    @property
    def runs(self) -> list[RunRecord]:
        """The records this driver trains (Population.runs' counterpart): its one run's."""
        return [self.record]

    def states(self) -> list[dict]:
        """This run's checkpoint state, as a population's `states()` (a Tune checkpoint)."""
        return [self.record.state_dict()]

    def updated_fraction(self, params: dict) -> dict | None:
        return self.experiment.updated_fraction(params)

    def validate(self, params: dict) -> float:
        return self.family.validate(self.backend, params, self.cfg)

    def eval_backend(self, run: RunRecord):
        return self.backend

    # -- training ----------------------------------------------------------------------------
    def train(self, resume: bool = False, state: dict | None = None) -> dict:
        """Train to cfg.iterations and evaluate. resume=True continues from the run directory's
        checkpoint; `state` continues from a given checkpoint state (a Tune trial's)."""
        run = self.record
        try:
            resumed = self.begin(resume, state)
        except StorageError as e:
            raise run.storage_fault(e) from None
        with reported_aborts([run], run.storage_fault):
            run.announce_start(resumed)
            if run.status == "running" and self.adam is None:
                self.log(f"{self.cfg.method} has no meta-parameters: nothing to meta-train, evaluating it")
                run.status = "completed"
            if run.status == "running":
                self._loop()
            return run.finish()

    def begin(self, resume: bool = False, state: dict | None = None) -> bool:
        """The run directory, fresh or resumed (its config, the first checkpoint or the state
        continued from); True when resumed."""
        check_trainable(self.cfg)
        run, resumed = self.record, resume or state is not None
        if self.cfg.train.tasks_per_vmap == "auto" and self.family.times_chunks:
            chosen = run.choose_chunk_size(resumed, lambda: self.backend.time_chunk_sizes(self.params),
                                           self.experiment.learner.net)
            self.cfg.train.tasks_per_vmap = chosen
            self.backend.set_chunk_size(chosen)
        if resumed and state is None:
            state = checkpoint.load(run.run_dir, self.log)
        run.begin(state)
        return resumed

    def _loop(self) -> None:
        run, cfg = self.record, self.cfg
        run.start_clock()
        while run.iteration < cfg.iterations:
            result = self.backend.meta_gradient(run.params, run.iteration, run.carry)
            run.carry = result.carry
            n = result.n_tasks
            loss = result.loss_sum / n
            flat = self.adam.flat
            finite = bool(self.adam.step({k: g[None] for k, g in result.grads.items()},
                                         torch.tensor([result.loss_sum], dtype=flat.dtype, device=flat.device), n,
                                         torch.ones(1, dtype=torch.bool, device=flat.device))[0])
            curve = None if result.curve_sum is None else (result.curve_sum / n).tolist()
            if not run.after_step(finite, loss, curve, result.metric_sum / n):
                break
        run.end_loop()

    def evaluate(self, *, tasks=None, shots=None, seed=None) -> dict:
        return self.record.evaluate(tasks=tasks, shots=shots, seed=seed)

    def complete(self, results: dict) -> dict:
        """A finished run (its results.json) whose plots or records a kill cut short: what is
        missing is written, nothing is evaluated again; each hook logs only what it lacks."""
        run = self.record
        run.load_state_dict(checkpoint.load(run.run_dir, self.log))
        run.announce_start(resumed=True)
        return run.decorate(results)


class _Reports(RunHook):
    """The solo run's events, told to its driver's reporter (a population reports its own)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_log(self, run, entry):
        self.trainer.reporter.on_log(self.trainer, entry)

    def on_checkpoint(self, run):
        self.trainer.reporter.on_checkpoint(self.trainer)

    def on_finish(self, run, results):
        self.trainer.reporter.on_finish(self.trainer, [results])
