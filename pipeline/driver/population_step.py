"""A population's whole training iteration as one function: every member's tasks drawn on the
device, every member's meta-gradient, the guarded Adam update and the count of non-finite steps
that freezes a diverging member. Under train.compile it is one compiled graph; under "graphs", on
CUDA, that graph is captured once and replayed every iteration (torch.compile's
"reduce-overhead"), so an iteration costs one launch instead of thousands of kernel launches and
a host round trip. The host reads the members' losses once per window of iterations (up to the
next log line, checkpoint, validation, halving rung or PBT decision) instead of once per
iteration: the device keeps each member's running flag and streak of non-finite steps, exactly
as the members' records then find them (RunRecord.after_step), so nothing waits on the host in
between. Used where a population trains in this process with its tasks drawn on its device
(task.sample_on); its numbers are those of the step-by-step path up to float rounding
(tests/integration/test_population_step.py)."""
from __future__ import annotations

import torch
from torch.func import grad_and_value

from pipeline.driver.meta_step import StackedAdam
from pipeline.shards.compiled import CompiledWithFallback, curve_at, mark_dynamic_rows

# Iterations whose results wait on the device before the host reads them (3 floats per member each).
MAX_WINDOW = 256


class WholeIteration(CompiledWithFallback):
    """train.compile's "population iteration": compiled (with CUDA graphs under "graphs" on a GPU)
    or eager, falling back as CompiledWithFallback says."""

    what = "population iteration"

    def __init__(self, shards, max_bad_steps: int, log=print, compile: bool = False, graphs: bool = False):
        """shards: the population's PopulationShards (its tasks, members' step sizes and shard forward)."""
        super().__init__(log, compile)
        self.shards, self.max_bad = shards, max_bad_steps
        self.graphs = graphs and compile
        self._compiled = None
        self._state = None  # (the Adam buffer they serve, the device's running flags, non-finite streaks, iteration)
        self.reads = 0  # windows read by the host (one transfer each)
        if compile:
            self._build(self.graphs)

    @classmethod
    def where_it_applies(cls, shards, in_process: bool, asked: bool | None, log=print) -> WholeIteration | None:
        """The whole iteration where the members train in this process, draw their tasks on its
        device and are compiled (asked None: train.compile's choice; True: also eagerly; False:
        never); eagerly it is slower than step by step (torch.func's grad per op, one draw per
        iteration instead of a block ahead: benchmarks/RESULTS.md, "Populations and packed sweeps")."""
        cfg, plan = shards.spec.base, shards.experiment.plan
        if (plan.compile if asked is None else asked) and in_process and shards.experiment.sample_on_device \
                and not cfg.train.block_tasks:
            return cls(shards, cfg.train.max_bad_steps, log, compile=plan.compile, graphs=plan.graphs)
        return None

    def _build(self, graphs: bool) -> None:
        self._compiled = torch.compile(self._iteration, dynamic=False, fullgraph=True,
                                       mode="reduce-overhead" if graphs else None)

    def _iteration(self, adam: StackedAdam, iteration, running, bad, seeds, indices, rows, curve: bool):
        """One iteration: draws, meta-gradients, update. (3, P) rows finite, mean loss, mean metric,
        then with `curve` (curve_at) the mean query loss before each inner step and after the last
        (steps + 1, P). Advances the counter `iteration` and the streaks `bad` / flags `running` in place."""
        batch = self.shards.draw(iteration, seeds, indices, rows)
        total = self.shards.summed_loss(curve)
        grads, (_, (loss, metric, *curves)) = grad_and_value(total, has_aux=True)(adam.views(adam.flat), batch)
        n = batch["y_query"].shape[1]  # tasks per member
        finite = StackedAdam.apply_update(adam, adam.flatten(grads), loss, n, running)
        with torch.no_grad():
            bad.copy_(torch.where(running, torch.where(finite, 0, bad + 1), bad))
            running.copy_(running & (bad < self.max_bad))
            iteration.add_(1)
        return torch.cat([torch.stack([finite.to(loss.dtype), loss / n, metric / n]), *(c.T / n for c in curves)])

    def run(self, adam: StackedAdam, iteration: int, count: int, members: list) -> list[tuple]:
        """Iterations [iteration, iteration + count) of the stacked `members` (in row order); per
        iteration (finite, loss, curve, metric) over the members as the step-by-step path gives
        them (means over the tasks; curve None where curve_at is not), read in one transfer."""
        cfg = self.shards.spec.base
        device, tasks = adam.flat.device, range(cfg.meta_batch_size)
        if self.shards.member_bytes is None:  # the population's memory, counted and checked once
            self.shards.check_memory(adam.params, self.shards.sample(iteration, tasks), len(members))
        seeds, indices, rows = self.shards.draw_inputs(tasks)
        if self._state is None or self._state[0] is not adam.flat:  # new buffers (a start, a halving rung)
            # fixed tensors, updated in place, so that a replayed graph reads them where it was captured
            self._state = (adam.flat, torch.zeros(len(members), dtype=torch.bool, device=device),
                           torch.zeros(len(members), dtype=torch.long, device=device),
                           torch.zeros((), dtype=torch.long, device=device))
            if self.graphs and device.type == "cuda":
                for t in (*self._state[1:], adam.flat, adam.exp_avg, adam.exp_avg_sq, adam.steps):
                    torch._dynamo.mark_static_address(t)
        _, running, bad, counter = self._state
        running.copy_(torch.tensor([m.status == "running" for m in members]))
        bad.copy_(torch.tensor([m.bad_streak for m in members]))
        counter.fill_(iteration)
        if self.shards.narrows and len(members) > 1:  # halving narrows the population: one graph for every count
            mark_dynamic_rows({"r": running, "b": bad, "w": rows, "p": adam.flat, "m": adam.exp_avg,
                               "v": adam.exp_avg_sq, "s": adam.steps, "beta": adam.beta,
                               "alpha": self.shards.alpha, "temperature": self.shards.temperature})
        replayed = self.graphs and device.type == "cuda"
        outs = []
        for it in range(iteration, iteration + count):
            args = (adam, counter, running, bad, seeds, indices, rows, curve_at(cfg, it))
            if replayed:
                torch.compiler.cudagraph_mark_step_begin()
            out = self._run(lambda: self._compiled(*args), lambda: self._iteration(*args))
            outs.append(out.clone() if replayed else out)  # a replay's outputs are overwritten by the next
        host = torch.cat([o.flatten() for o in outs]).cpu()  # one transfer
        self.reads += 1
        steps = []
        for out, part in zip(outs, host.split([o.numel() for o in outs])):
            finite, loss, metric, *curve = part.view(out.shape).tolist()
            steps.append(([bool(f) for f in finite], loss, [list(c) for c in zip(*curve)] if curve else
                          [None] * len(loss), metric))
        return steps


def window(iteration: int, cfg, scheduler) -> int:
    """How many iterations from `iteration` run on the device before the host must look: up to and
    including the next one after which something happens (a log line, checkpoint, validation,
    scheduler decision, the end)."""
    train = cfg.train

    def event(done: int) -> bool:
        return (done % train.log_every == 0 or done % train.checkpoint_every == 0 or done >= cfg.iterations
                or bool(train.validate_every and done % train.validate_every == 0)
                or scheduler.due(done, cfg.iterations))

    count = 1
    while count < MAX_WINDOW and not event(iteration + count):
        count += 1
    return count
