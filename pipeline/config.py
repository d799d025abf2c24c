"""The one experiment-config schema: typed dataclasses, loaded from YAML, overridden by --set
(the engine: pipeline/yaml_dataclasses.py). Keys mean different things to the two method families
(pipeline/driver/families.py): few-shot learners ("few-shot") and learned optimizers with their
hand-designed baselines ("optimizers"); the comments say which.

Every error is a `ConfigError` whose message is one line naming the key and what is allowed; the
CLI turns it into exit code 2 before any work starts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import storage
from pipeline.yaml_dataclasses import build, float_fields, load_yaml, set_key, to_dict
from tasks import TASKS, names
from tasks.errors import ConfigError, did_you_mean, unknown_choice  # the error type's home is below both packages

BACKENDS = ("ray", "local")
NORMS = ("batch", "none")
OMNIGLOT_SPLITS = ("character", "alphabet", "all")
EVAL_SPLITS = ("test", "train")
QUERY_BN = ("", "batch", "support")
COMPILE = ("auto", "always", "never", "graphs")
SAMPLE_ON = ("auto", "cpu", "device")
AUGMENTS = ("none", "affine")
PRECISIONS = ("fp32", "tf32", "bf16")
META_LOSSES = ("train", "heldout")
# Keys in which the members of a population (pipeline/driver/population.py) may differ: numbers that
# enter the computation as per-member tensors, the seeds, and where each member's run lies; MUTABLE:
# those a scheduler may change while the members train (PBT's hyperparam_mutations).
PACKABLE = ("alpha", "beta", "gumbel_temperature", "seed", "eval.seed", "run_name", "output_dir")
MUTABLE = ("alpha", "beta", "gumbel_temperature")
MUTATION_KINDS = ("choice", "uniform", "loguniform")


REPOSITORY = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPOSITORY / "tune_configs"


def data_path(d: str) -> Path:
    """A data path as given (~ expanded); a relative one that is not there from the working
    directory is taken from the repository root, as a saved config.yaml writes it (portable_path)."""
    p = Path(d).expanduser()
    return REPOSITORY / p if not p.is_absolute() and not p.exists() and (REPOSITORY / p).exists() else p


SHARED = REPOSITORY.parent / "shared"  # the data beside the repository (../shared/data/...)


def portable_path(d: str) -> str:
    """A data path as a run's config.yaml records it: relative to the repository root when it lies
    inside the repository or in the shared folder beside it (../shared/data/...), so that no
    machine's directory layout is written into run directories; other paths (a temporary folder that
    happens to be a sibling of the clone, say) as they are."""
    p = Path(d)
    if p.is_absolute() and any(p == r or r in p.parents for r in (REPOSITORY, SHARED)):
        return os.path.relpath(p, REPOSITORY)
    return d


@dataclass
class TaskConfig:
    name: str = "sinusoid"  # a task of the table in tasks/__init__.py: regression and image tasks (few-shot),
    #   optimizee distributions (optimizers)
    shots: int = 10  # K support examples per task (per class for classification) in meta-training
    query: int = 10  # query examples per task (per class for classification)
    order: int = 2  # polynomial order (polynomial only)
    ways: int = 5  # classes per task (classification only)
    # image data sets
    data: list[str] = field(default_factory=list)  # folders / zips, or one packed .arrow file
    image_size: int = 0  # 0 = the data set's standard size (Omniglot 28, miniImageNet 84)
    rotations: bool = False  # 90-degree rotations of every class as extra classes (Omniglot protocol)
    test_rotations: bool = True  # with rotations: the test classes' rotations too (MAML's protocol); false
    #   tests the characters as drawn (Lake et al.'s within-alphabet protocol)
    augment: str = "none"  # training images: "none" | "affine": a random affine distortion per image
    #   (Koch et al. 2015: rotation +-10 deg, shear +-0.3, scale 0.8-1.2, shift +-2 px), from the task stream
    split: str = "character"  # Omniglot: "character" (train_characters / rest) or "alphabet"; "all": every
    #   class is a test class (Omniglot and miniImageNet; `metatrain eval --data` on another data set)
    within_group: bool = False  # image tasks: every class of a task from one group (Omniglot alphabet):
    #   Lake et al.'s within-alphabet protocol; in training and evaluation alike
    train_characters: int = 1200  # Omniglot character split: characters for meta-training (MAML: 1200)
    split_seed: int = 0  # Omniglot character split: which characters; fixed apart from the run's seed
    train_alphabets: list[str] = field(default_factory=list)  # alphabet split; [] = every non-test alphabet
    test_alphabets: list[str] = field(default_factory=list)  # alphabet split
    split_dir: str = ""  # miniImageNet: folder of train.csv / val.csv / test.csv; "" = the data folder
    # optimizee distributions (learned optimizers); mnist_mlp reads task.data: the MNIST CSV or a torchvision root
    dim: int = 10  # quadratic: dimension of theta (W is dim x dim)
    minibatch: int = 128  # mnist_mlp: images per optimizee step
    optimizee_images: int = 0  # mnist_mlp: images each training / validation optimizee trains on, its own
    #   random draw (0 = all the training images, less its held-out fifth under train.meta_loss heldout,
    #   whose held-out data are otherwise the rest); test optimizees train on the test images
    sample_on: str = "auto"  # where tasks are drawn: "cpu" (numpy, then copied), "device" (torch, on the
    #   run's device), "auto" = the device when it is an accelerator
    device_cache_gb: float = 2.0  # image tasks sampled on a device: every image is held there when it fits


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [40, 40])  # MLP (regression tasks; the mnist_mlp optimizee)
    optimizee_activation: str = "sigmoid"  # mnist_mlp optimizee: sigmoid (the paper) | relu
    init_std: float = 0.01  # truncated-normal std of dense weights
    filters: int = 64  # conv4 (image tasks): filters per conv cell
    ways: int = 0  # outputs of the classification head; 0 = task.ways (`eval --ways` tests fewer ways)
    strided: bool = True  # conv4: stride-2 convs (Omniglot) or stride 1 + 2x2 max-pool (miniImageNet)
    batch_norm: str = "batch"  # conv4: "batch" (batch statistics of the set being forwarded, never
    #   carried across tasks; scale/shift are meta-parameters, not adapted: reference MAML) | "none"


@dataclass
class EvalConfig:
    tasks: int = 600
    shots: list[int] = field(default_factory=lambda: [5, 10, 20])
    inner_steps: int = 1  # few-shot: inner steps at meta-test time; optimizers: each trajectory's horizon
    mask: str = "sample"  # masked methods: "sample" a mask per task, or the most probable ("argmax")
    # batch-norm statistics of the query set at meta-test time: "batch" (its own batch, as reference
    # MAML) or "support" (averages over the support passes of the inner loop, Ravi & Larochelle 3.4);
    # "" = the method's paper: "support" for metalstm, "batch" otherwise. No effect without batch norm.
    query_bn: str = ""
    seed: int = 0  # the fixed test-task set; independent of the training seed so runs compare paired
    # test tasks (optimizees) per evaluation chunk: the unit spread over the workers, one eval_shard
    # call each (within a chunk, train.tasks_per_vmap tasks per vectorised call)
    batch_size: int = 200
    split: str = "test"  # the split test tasks are drawn from; "train" to tune hand-designed baselines on it
    # few-shot populations under a sweep's halving scheduler: validation tasks that rank the members
    # (val_loss), drawn from the training distribution on a stream no run trains on
    val_tasks: int = 200
    # learned optimizers: hand-designed optimizers (sgd, rmsprop, adam, nag) -> learning rate, evaluated
    # on the same optimizees as the run's method (eval.inner_steps is the horizon of every trajectory)
    baselines: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    checkpoint_every: int = 500
    log_every: int = 100
    max_bad_steps: int = 20  # consecutive non-finite steps before the run ends as "diverged"
    # tasks per vectorised call: 0 = the whole shard; "auto" = the fastest, timed on the first shard at
    # the start of a run (pipeline/core/meta_batch.py) and written into the run's config.yaml
    tasks_per_vmap: int | str = "auto"
    # tasks per block: > 0 makes the run bitwise the same whatever the number of shard workers (of one
    # kind: the same threads per worker, the same device model, the same torch). The meta-batch is cut
    # into fixed blocks of this many tasks (the last holds the remainder), each computed by one
    # shard-function call wherever it runs, and the block sums are added in a fixed pairwise tree
    # over block index. 0 = each worker sums one contiguous range (bitwise only at a fixed worker count)
    block_tasks: int = 0
    grad_clip: float = 0.0  # clip the meta-gradient's global norm to this before the Adam step; 0 = off
    unroll: int = 0  # learned optimizers: optimizee steps per truncated-BPTT unroll (paper 20); 0 = inner_steps
    # learned optimizers: where each step's meta-loss term f_t is measured: "train" (the minibatch the
    # optimizee steps on: the paper) or "heldout" (data the optimizee never trains on: Metz et al.
    # 2019's validation meta-objective; the optimizer still reads training gradients only)
    meta_loss: str = "train"
    # learned optimizers: random scaling (Lv et al. 2017): each training optimizee's coordinates seen
    # through a scale exp(u), u ~ U(-r, r), drawn from its task stream; 0 = off
    random_scaling: float = 0.0
    # under torch.compile: the few-shot shard function (the whole training step), or a learned
    # optimizer's update step; "always", "never", or "auto" = for runs of at least
    # COMPILE_AUTO_ITERATIONS iterations (COMPILE_AUTO_UNROLLS for learned optimizers), where the
    # saving outweighs the compile time (benchmarks/bench_compile.py)
    compile: str = "auto"
    # learned optimizers: every `validate_every` iterations, the mean final loss of the learned
    # optimizer on `validate_tasks` fresh optimizees of the validation split (the training images,
    # streams of their own); the run is evaluated with the parameters that scored lowest (the paper's
    # reference code keeps such a best checkpoint). 0 = evaluate the last parameters
    validate_every: int = 0
    validate_tasks: int = 20
    # arithmetic of the learner's network: "fp32"; "tf32" (on CUDA: float32 products rounded to TF32
    # by cuBLAS / cuDNN; the same as fp32 on a CPU); "bf16" (each conv / dense layer in bfloat16, its
    # output, batch norm, the loss, meta-gradients and Adam in float32; few-shot methods)
    precision: str = "fp32"
    plots: bool = True  # draw the run's figures when it ends (a population of 100 members spends minutes on them)


@dataclass
class RayConfig:
    # shard workers: N; 0 = sized to the cluster (free CPUs / cpus_per_worker, <= meta-batch); or
    # {min: M, max: N}, elastic (pipeline/distributed/pool.py): starts with what the cluster can place
    # (at least M), grows when capacity appears, shrinks when a worker is lost (needs train.block_tasks)
    workers: int | dict = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional allowed; ignored (CPU) where the node has no GPU
    address: str = ""  # "" = RAY_ADDRESS if set, else a local Ray started in process
    object_store_mb: int = 0  # local Ray only; 0 = Ray's default
    max_worker_restarts: int = 3  # per shard and iteration, before the run fails
    start_timeout_s: float = 600.0  # how long to wait for workers Ray cannot place yet (an autoscaler adding nodes)
    # how long a run may have fewer workers than ray.workers' min (lost ones not replaced) before it
    # stops in one line, its checkpoints intact
    replace_timeout_s: float = 300.0


def worker_bounds(rc: RayConfig) -> tuple[int, int]:
    """(min, max) shard workers of ray.workers: a number N is (N, N)."""
    w = rc.workers
    return (w["min"], w["max"]) if isinstance(w, dict) else (w, w)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # "" = sqlite:///<absolute output_dir>/mlflow.db (no server needed)
    experiment: str = "metatrain"  # MLflow experiment name (a sweep uses its own name)
    log_model: bool = True  # log the meta-learned network with mlflow.pytorch.log_model


@dataclass
class Config:
    method: str = "maml"
    # alpha: few-shot: the inner step size (unused by metasgd, whose steps are meta-learned, and by
    #   metalstm, whose LSTM computes the step); optimizers: l2l's output scale (step = alpha * LSTM
    #   output), a baseline's learning rate (UpdateRule.alpha_name says which)
    alpha: float = 0.01
    beta: float = 0.001  # outer (Adam) step size of the meta-parameters; unused by the baselines (none)
    gumbel_temperature: float = 1.0  # masked methods (mnet, mtnet): the Gumbel-softmax temperature
    # few-shot: inner steps per task in meta-training (eval.inner_steps at test time); optimizers: the
    #   horizon T of an optimizee trajectory (cut into unrolls of train.unroll steps)
    inner_steps: int = 1
    meta_batch_size: int = 25  # tasks (few-shot) or optimizees (optimizers) per meta-iteration
    iterations: int = 1000  # meta-iterations (optimizers: one unroll each)
    seed: int = 0
    backend: str = "ray"  # "ray": shard workers; "local": the same shard function in this process
    output_dir: str = "runs"
    run_name: str = ""  # empty: <method>-<task>-s<seed>-<timestamp>
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def is_sweep_file(raw: dict) -> bool:
    """A sweep file names its base config and a space; an experiment config does neither."""
    return "base" in raw or "space" in raw


def shipped(kind: str) -> list[str]:
    """The names in tune_configs/ of one kind: "config" (experiment configs, for `train`) or
    "sweep" (sweep files, for `sweep`)."""
    names = []
    for f in sorted(CONFIG_DIR.glob("*.yaml")):
        raw = yaml.safe_load(f.read_text()) or {}
        if is_sweep_file(raw) == (kind == "sweep"):
            names.append(f.stem)
    return names


def resolve_path(name_or_path: str | Path, kind: str = "config") -> Path:
    """A path, or the name of a shipped config in tune_configs/ (with or without .yaml); a name
    that is neither is one line naming the closest shipped file of that kind and all of them."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    names = shipped(kind)
    what = "sweep files" if kind == "sweep" else "experiment configs"
    raise ConfigError(f"config: no such file {str(name_or_path)!r};{did_you_mean(p.stem, names)} shipped {what}: "
                      f"{', '.join(names)}")


def load_config(source: str | Path | dict | None = None,
                overrides: list[str] | tuple[str, ...] | dict = (), *, local: bool = True) -> Config:
    """Defaults <- YAML file (or dict) <- overrides: `key=value` strings (the value parsed as YAML)
    or a {dotted key: value} mapping (values used as they are). local=False checks a config meant
    for another machine (a job sent to a cluster): data paths are neither checked nor resolved here."""
    if source is None:
        raw = {}
    elif isinstance(source, dict):
        raw = source
    else:
        path = resolve_path(source)
        raw = load_yaml(path)
        if is_sweep_file(raw):
            raise ConfigError(f"config: {path} is a sweep file; run it with `metatrain sweep {source}`")
    cfg = build(Config, raw, "")
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            set_key(cfg, key, value)
        overrides = ()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        set_key(cfg, key.strip(), yaml.safe_load(value) if value.strip() else "")
    validate(cfg, check_paths=local)
    if not local:
        return cfg
    # Data paths are pinned to absolute paths where the config is loaded: Ray workers and Tune
    # trials run in other working directories.
    cfg.task.data = [str(data_path(d).resolve()) for d in cfg.task.data]
    if cfg.task.split_dir:
        cfg.task.split_dir = str(data_path(cfg.task.split_dir).resolve())
    return cfg


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config, check_paths: bool = True) -> None:
    """Reject values no run could use, section by section (the first error, in one line)."""
    # The rule registry imports torch: read here, so that the schema itself (and `metatrain report`,
    # which reads sweep files through it) does not
    from pipeline.core.rules import METHODS

    for key, value in float_fields(cfg):  # inf and nan pass every "> 0" / ">= 0" check below
        _need(math.isfinite(value), f"{key}: must be a finite number, got {value}")
    _need(cfg.method in METHODS, unknown_choice("method", "method", cfg.method, METHODS))
    _need(cfg.task.name in TASKS, unknown_choice("task.name", "task", cfg.task.name, TASKS))
    _validate_family(cfg, check_paths)
    _validate_run(cfg)
    _validate_task_and_model(cfg, check_paths)
    _validate_eval(cfg)
    _validate_train(cfg)
    _validate_ray(cfg)
    _need(bool(cfg.tracking.experiment.strip()), "tracking.experiment: must be a non-empty MLflow experiment name")
    _need("/" not in cfg.run_name and cfg.run_name not in (".", ".."),
          f"run_name: must be a plain directory name, got {cfg.run_name!r}")


def _validate_run(cfg: Config) -> None:
    """The top-level numbers: step sizes, temperature, steps, batch, iterations, seed."""
    _need(cfg.alpha > 0, f"alpha: must be > 0, got {cfg.alpha}")
    _need(cfg.beta > 0, f"beta: must be > 0, got {cfg.beta}")
    _need(cfg.gumbel_temperature > 0, f"gumbel_temperature: must be > 0, got {cfg.gumbel_temperature}")
    _need(cfg.inner_steps >= 1, f"inner_steps: must be >= 1, got {cfg.inner_steps}")
    _need(cfg.meta_batch_size >= 1, f"meta_batch_size: must be >= 1, got {cfg.meta_batch_size}")
    _need(cfg.iterations >= 0, f"iterations: must be >= 0, got {cfg.iterations}")
    _need(0 <= cfg.seed < 2**64, f"seed: must be in [0, 2**64), got {cfg.seed}")


def _validate_task_and_model(cfg: Config, check_paths: bool) -> None:
    _need(cfg.task.shots >= 1, f"task.shots: K must be >= 1, got {cfg.task.shots}")
    _need(cfg.task.query >= 1, f"task.query: must be >= 1, got {cfg.task.query}")
    _need(cfg.task.order in (0, 1, 2), f"task.order: polynomial order must be one of 0, 1, 2, got {cfg.task.order}")
    _need(all(h >= 1 for h in cfg.model.hidden), f"model.hidden: layer widths must be >= 1, got {cfg.model.hidden}")
    _need(cfg.task.ways >= 2, f"task.ways: must be >= 2, got {cfg.task.ways}")
    _need(cfg.model.ways == 0 or cfg.model.ways >= cfg.task.ways,
          f"model.ways: the head's {cfg.model.ways} outputs cannot hold {cfg.task.ways}-way tasks (task.ways)")
    _need(cfg.model.filters >= 1, f"model.filters: must be >= 1, got {cfg.model.filters}")
    _need(cfg.model.init_std > 0, f"model.init_std: must be > 0, got {cfg.model.init_std}")
    _need(cfg.model.batch_norm in NORMS, unknown_choice("model.batch_norm", "choice", cfg.model.batch_norm, NORMS))
    _need(cfg.task.split in OMNIGLOT_SPLITS, unknown_choice("task.split", "split", cfg.task.split, OMNIGLOT_SPLITS))
    _need(cfg.task.train_characters >= 1, f"task.train_characters: must be >= 1, got {cfg.task.train_characters}")
    _need(cfg.task.image_size == 0 or cfg.task.image_size >= 16,
          f"task.image_size: must be >= 16 (four conv cells) or 0 for the data set's size, got {cfg.task.image_size}")
    spec = TASKS[cfg.task.name]
    _need(cfg.task.augment in AUGMENTS, unknown_choice("task.augment", "choice", cfg.task.augment, AUGMENTS))
    _need(cfg.task.sample_on in SAMPLE_ON, unknown_choice("task.sample_on", "choice", cfg.task.sample_on, SAMPLE_ON))
    _need(cfg.task.device_cache_gb >= 0, f"task.device_cache_gb: must be >= 0 (0 = gather images on the CPU), got "
          f"{cfg.task.device_cache_gb}")
    if spec.read_folders:  # an image data set on disk
        _need(bool(cfg.task.data), f"task.data: {cfg.task.name} needs the data's location: {spec.data}, "
              "or a .arrow file from `metatrain data pack`")
    if spec.data_files:  # a data set in this many files or folders
        count = "one location" if spec.data_files == 1 else f"{spec.data_files} locations"
        _need(len(cfg.task.data) == spec.data_files,
              f"task.data: {cfg.task.name} needs {count}: {spec.data}; got {cfg.task.data}")
    for d in cfg.task.data if check_paths and spec.data else ():
        _need(data_path(d).exists(), f"task.data: {d} does not exist")


def _validate_eval(cfg: Config) -> None:
    from pipeline.core.rules.masked import MASK_MODES  # torch, as METHODS

    _need(cfg.eval.tasks >= 1, f"eval.tasks: must be >= 1, got {cfg.eval.tasks}")
    _need(len(cfg.eval.shots) > 0 and all(k >= 1 for k in cfg.eval.shots),
          f"eval.shots: every K must be >= 1, got {cfg.eval.shots}")
    _need(cfg.eval.inner_steps >= 0, f"eval.inner_steps: must be >= 0, got {cfg.eval.inner_steps}")
    _need(cfg.eval.mask in MASK_MODES, unknown_choice("eval.mask", "mode", cfg.eval.mask, MASK_MODES))
    _need(cfg.eval.query_bn in QUERY_BN, f"eval.query_bn: unknown choice {cfg.eval.query_bn!r}; allowed: "
          f"{', '.join(repr(q) for q in QUERY_BN)}")
    _need(0 <= cfg.eval.seed < 2**64, f"eval.seed: must be in [0, 2**64), got {cfg.eval.seed}")
    _need(cfg.eval.batch_size >= 1, f"eval.batch_size: must be >= 1, got {cfg.eval.batch_size}")
    _need(cfg.eval.val_tasks >= 1, f"eval.val_tasks: must be >= 1, got {cfg.eval.val_tasks}")
    _need(cfg.eval.split in EVAL_SPLITS, unknown_choice("eval.split", "split", cfg.eval.split, EVAL_SPLITS))


def _validate_train(cfg: Config) -> None:
    _need(cfg.train.checkpoint_every >= 1, f"train.checkpoint_every: must be >= 1, got {cfg.train.checkpoint_every}")
    _need(cfg.train.log_every >= 1, f"train.log_every: must be >= 1, got {cfg.train.log_every}")
    tpv = cfg.train.tasks_per_vmap
    _need(tpv == "auto" or (isinstance(tpv, int) and tpv >= 0),
          f"train.tasks_per_vmap: must be an integer >= 0 (0 = whole shard) or 'auto', got {tpv!r}")
    _need(0 <= cfg.train.block_tasks <= cfg.meta_batch_size,
          f"train.block_tasks: must be in [0, meta_batch_size = {cfg.meta_batch_size}] (0 = one contiguous range per "
          f"worker; a size that does not divide the meta-batch leaves a smaller last block), got "
          f"{cfg.train.block_tasks}")
    _need(cfg.train.grad_clip >= 0, f"train.grad_clip: must be >= 0 (0 = off), got {cfg.train.grad_clip}")
    _need(cfg.train.compile in COMPILE, unknown_choice("train.compile", "choice", cfg.train.compile, COMPILE))
    _need(cfg.train.precision in PRECISIONS,
          unknown_choice("train.precision", "choice", cfg.train.precision, PRECISIONS))
    _need(cfg.train.max_bad_steps >= 1, f"train.max_bad_steps: must be >= 1, got {cfg.train.max_bad_steps}")
    _need(cfg.backend in BACKENDS, unknown_choice("backend", "backend", cfg.backend, BACKENDS))


def _validate_ray(cfg: Config) -> None:
    workers = cfg.ray.workers
    if isinstance(workers, dict):
        _need(set(workers) == {"min", "max"} and all(type(v) is int for v in workers.values()),
              f"ray.workers: elastic workers are {{min: M, max: N}} with integers, got {workers}")
        _need(workers["min"] >= 1, f"ray.workers: min must be >= 1, got {workers['min']}")
        _need(workers["min"] <= workers["max"],
              f"ray.workers: min ({workers['min']}) must be <= max ({workers['max']})")
        _need(cfg.train.block_tasks > 0 or cfg.backend != "ray",
              "ray.workers: elastic workers ({min, max}) need train.block_tasks > 0, so that the result does not "
              f"depend on how many workers run (e.g. train.block_tasks={-(-cfg.meta_batch_size // workers['max'])})")
    else:
        _need(workers >= 0, f"ray.workers: must be >= 0 (0 = sized to the cluster), got {workers}")
    _need(cfg.ray.cpus_per_worker > 0, f"ray.cpus_per_worker: must be > 0, got {cfg.ray.cpus_per_worker}")
    _need(cfg.ray.gpus_per_worker >= 0, f"ray.gpus_per_worker: must be >= 0, got {cfg.ray.gpus_per_worker}")
    _need(cfg.ray.object_store_mb >= 0, f"ray.object_store_mb: must be >= 0, got {cfg.ray.object_store_mb}")
    _need(cfg.ray.start_timeout_s > 0, f"ray.start_timeout_s: must be > 0, got {cfg.ray.start_timeout_s}")
    _need(cfg.ray.replace_timeout_s > 0, f"ray.replace_timeout_s: must be > 0, got {cfg.ray.replace_timeout_s}")
    _need(cfg.ray.max_worker_restarts >= 0, f"ray.max_worker_restarts: must be >= 0, got {cfg.ray.max_worker_restarts}")


def _validate_family(cfg: Config, check_paths: bool) -> None:
    """Each method trains on the task kinds its rule names (UpdateRule.trains_on): learned optimizers
    (method l2l and the baselines) on optimizee distributions, and only they do."""
    from pipeline.core.rules import RULES
    from tasks.optimizees import ACTIVATIONS

    rule, kind = RULES[cfg.method], TASKS[cfg.task.name].kind
    optimizers = sorted(k for k, r in RULES.items() if "optimizee" in r.trains_on)
    is_optimizer = "optimizee" in rule.trains_on
    if kind not in rule.trains_on:
        if is_optimizer:
            tasks = [n for k in rule.trains_on for n in names(k)]
            raise ConfigError(f"task.name: method {cfg.method} optimizes optimizees; allowed: {', '.join(tasks)}, "
                              f"got {cfg.task.name!r}")
        methods = sorted(m for m, r in RULES.items() if kind in r.trains_on)
        raise ConfigError(f"method: task {cfg.task.name} is an optimizee distribution; allowed methods: "
                          f"{', '.join(methods)}, got {cfg.method!r}")
    if cfg.train.unroll < 0:
        raise ConfigError(f"train.unroll: must be >= 0 (0 = the whole trajectory), got {cfg.train.unroll}")
    if cfg.train.validate_every < 0 or cfg.train.validate_tasks < 1:
        raise ConfigError(f"train.validate_every / train.validate_tasks: must be >= 0 (0 = off) / >= 1, got "
                          f"{cfg.train.validate_every} / {cfg.train.validate_tasks}")
    if cfg.train.meta_loss not in META_LOSSES:
        raise ConfigError(unknown_choice("train.meta_loss", "choice", cfg.train.meta_loss, META_LOSSES))
    if cfg.train.random_scaling < 0:
        raise ConfigError(f"train.random_scaling: the log-scale range r must be >= 0 (0 = off), got "
                          f"{cfg.train.random_scaling}")
    if not is_optimizer:
        if cfg.train.random_scaling:
            raise ConfigError(f"train.random_scaling: scales a learned optimizer's optimizees (methods "
                              f"{', '.join(optimizers)}); method {cfg.method} takes 0")
        if cfg.train.meta_loss != "train":
            raise ConfigError(f"train.meta_loss: where a learned optimizer's meta-loss is measured (methods "
                              f"{', '.join(optimizers)}); method {cfg.method} takes train")
        if cfg.train.validate_every:
            raise ConfigError(f"train.validate_every: selects a learned optimizer's parameters (methods "
                              f"{', '.join(optimizers)}); method {cfg.method} takes 0")
        if cfg.eval.baselines:
            raise ConfigError(f"eval.baselines: only learned optimizers compare with baselines; method {cfg.method} "
                              "takes none")
        return
    if cfg.train.precision == "bf16":
        raise ConfigError(f"train.precision: bf16 is for the networks of few-shot methods; method {cfg.method} "
                          "takes fp32 or tf32")
    if cfg.train.unroll > cfg.inner_steps or (cfg.train.unroll and cfg.inner_steps % cfg.train.unroll):
        raise ConfigError(f"train.unroll: must divide the horizon inner_steps={cfg.inner_steps} "
                          f"(and so be at most it), got {cfg.train.unroll}")
    if cfg.eval.inner_steps < 1:
        raise ConfigError(f"eval.inner_steps: the evaluation horizon must be >= 1, got {cfg.eval.inner_steps}")
    baselines = [m for m in optimizers if not RULES[m].learned]
    for name, lr in cfg.eval.baselines.items():
        if name not in baselines:
            raise ConfigError(unknown_choice("eval.baselines", "optimizer", name, baselines))
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"eval.baselines.{name}: the learning rate must be a finite number > 0, got {lr!r}")
    if cfg.task.dim < 1:
        raise ConfigError(f"task.dim: must be >= 1, got {cfg.task.dim}")
    if cfg.task.minibatch < 1:
        raise ConfigError(f"task.minibatch: must be >= 1, got {cfg.task.minibatch}")
    if cfg.task.optimizee_images < 0 or (cfg.task.optimizee_images and cfg.task.name != "mnist_mlp"):
        raise ConfigError(f"task.optimizee_images: images each MNIST optimizee trains on (task mnist_mlp; 0 = all), "
                          f"got {cfg.task.optimizee_images} for task {cfg.task.name}")
    if cfg.model.optimizee_activation not in ACTIVATIONS:
        raise ConfigError(unknown_choice("model.optimizee_activation", "choice", cfg.model.optimizee_activation,
                                         ACTIVATIONS))


def save_config(cfg: Config, path: Path) -> None:
    d = to_dict(cfg)
    d["task"]["data"] = [portable_path(p) for p in d["task"]["data"]]
    d["task"]["split_dir"] = portable_path(d["task"]["split_dir"]) if d["task"]["split_dir"] else ""
    storage.write_text(path, yaml.safe_dump(d, sort_keys=False))
