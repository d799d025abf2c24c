"""Structure: the wings of pipeline/ import only the wings below them, no import cycles among the
project's modules, schedulers that import only each other, and schemas and a report that load no
torch, Ray or MLflow."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: tests/unit/)
PACKAGES = ("pipeline", "tasks")


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports, at module level AND inside functions (every Import /
    ImportFrom node of the file): a lazy import is still a dependency. `from a import b` is an edge
    to a.b when that is a module, else to a. Parent packages' __init__ that Python runs implicitly
    are not edges (pipeline/core/rules/__init__ imports its rule modules by pkgutil, not statically)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import pipeline.core.rules.base as x` -> that module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) >= 30 and "pipeline.driver.trainer" in graph["pipeline.cli"]  # the parser sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The wings from the bottom up (pipeline/__init__.py): a module imports only modules of its own wing
# or of the wings below it. `plots` only draws (core's rule names); `config` is the schema.
WINGS = ("tasks", "pipeline.core", "pipeline.storage", "pipeline.plots", "pipeline.yaml_dataclasses", "pipeline.config",
         "pipeline.members",
         "pipeline.shards",
         "pipeline.distributed", "pipeline.driver", "pipeline.serve", "pipeline.installed_packages",
         "pipeline.tracking", "pipeline.sweeps",
         "pipeline.jobs", "pipeline.local_cluster", "pipeline.cli")


def wing(module: str) -> int | None:
    """The rank of a module's wing in WINGS (None: the `pipeline` package itself)."""
    ranks = [i for i, w in enumerate(WINGS) if module == w or module.startswith(w + ".")]
    return ranks[0] if ranks else None


def wing_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({WINGS[wing(m)]}) imports {d} ({WINGS[wing(d)]})" for m, deps in graph.items()
                  for d in deps if wing(m) is not None and wing(d) is not None and wing(d) > wing(m))


def test_every_module_belongs_to_a_wing():
    assert [m for m in import_graph() if m != "pipeline" and wing(m) is None] == []


def test_wings_import_only_the_wings_below_them():
    assert wing_violations(import_graph()) == []


def test_the_wing_check_finds_a_planted_upward_import():
    graph = {"pipeline.core.meta_batch": {"pipeline.config"}, "pipeline.config": {"pipeline.core.rules"},
             "pipeline.distributed.workers": {"pipeline.shards.sources"}}
    assert wing_violations(graph) == [
        "pipeline.core.meta_batch (pipeline.core) imports pipeline.config (pipeline.config)"]


def test_distributed_runs_shard_sources_without_knowing_populations():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.endswith(".population")) for m, deps in graph.items()
                 if m.startswith("pipeline.distributed")}
    assert not any(offenders.values()), offenders


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_tasks_never_import_pipeline():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("pipeline")) for m, deps in graph.items()
                 if m.startswith("tasks")}
    assert not any(offenders.values()), offenders


def test_schedulers_import_only_each_other():
    """A scheduler decides from numbers alone: no backend, trainer, population or torch."""
    graph = import_graph()
    schedulers = [m for m in graph if m.startswith("pipeline.driver.schedulers")]
    assert len(schedulers) >= 4
    assert {m: sorted(d for d in graph[m] if not d.startswith("pipeline.driver.schedulers"))
            for m in schedulers} == dict.fromkeys(schedulers, [])
    code = "import sys, pipeline.driver.schedulers; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("modules", ["pipeline.sweeps.report, pipeline.cli", "pipeline.sweeps.spec",
                                     "pipeline.config", "pipeline.plots"])
def test_the_schemas_and_the_report_import_no_torch_ray_or_mlflow(modules):
    """The experiment and sweep schemas, the report and the figures import no torch, Ray or MLflow
    (the rule registry and the family table are read inside the functions that check a config or a
    sweep); `metatrain report` on a real sweep: tests/integration/test_sweep.py."""
    code = f"import sys, {modules}; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


HEAVY = ("torch", "numpy", "ray", "mlflow", "pandas", "matplotlib", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["traun", "x"], ["train"],
                                  ["sweep", "--help"], ["cluster", "--help"], ["jobs", "lst"]])
def test_help_and_argument_errors_import_no_heavy_module(argv):
    """`metatrain --help`, a command's --help and argument errors answer from the parser alone:
    no torch, numpy, Ray, MLflow, pandas, matplotlib or pyarrow is imported (each costs seconds)."""
    code = (f"import sys\nfrom pipeline.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
