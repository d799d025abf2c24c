"""Task distributions and the one sampling path (`tasks.sampling.sample_batch`).

`TASKS` is the one table of task names: each entry says what kind of task it is (regression,
images, or an optimizee distribution for learned optimizers), how to build it, and for images
its format. Every other module asks this table instead of listing names. The table imports no
torch or numpy (each distribution's module is imported when it is built): the command line and the
config schema read it without them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.errors import ConfigError

KINDS = ("regression", "images", "optimizee")


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # one of KINDS
    build: Callable  # (task config, model config) -> the distribution; data sets are read here
    channels: int = 0  # images: input channels
    default_size: int = 0  # images: side in pixels when task.image_size is 0 (the data set's standard)
    data: str = ""  # what task.data must hold, in words ("" = nothing is read from disk)
    read_folders: Callable | None = None  # image data sets: (sources, split_dir, size) -> ImageSet, for `data pack`
    inverted: bool = False  # images: strokes inverted to bright on dark when read (Omniglot), so are a user's
    takes_order: bool = False  # regression: the task has an order (task.order: the polynomial's degree)
    data_files: int = 0  # task.data must name exactly this many locations (0: any number, as image folders)


def _omniglot(task, model):
    from tasks.omniglot import omniglot

    return omniglot(task, image_format(task)[1])


def _miniimagenet(task, model):
    from tasks.miniimagenet import miniimagenet

    return miniimagenet(task, image_format(task)[1])


def _read_omniglot(sources: list[str], split_dir: str, size: int):
    from tasks.images import read_alphabets

    return read_alphabets(sources, size, invert=True)


def _read_miniimagenet(sources: list[str], split_dir: str, size: int):
    from tasks.images import read_class_folders

    if len(sources) != 1:
        raise ConfigError(f"--src: miniimagenet takes one folder, got {len(sources)}")
    return read_class_folders(sources[0], split_dir, size)


def _sinusoid(task, model):
    from tasks.regression import Sinusoid

    return Sinusoid()


def _polynomial(task, model):
    from tasks.regression import Polynomial

    return Polynomial(order=task.order)


def _synthetic_images(task, model):
    from tasks.synthetic import SyntheticImages

    return SyntheticImages(task.ways, image_format(task)[1], TASKS["synthetic_images"].channels)


def _quadratic(task, model, heldout: bool = False):
    from tasks.optimizees import Quadratic

    return Quadratic(task.dim, heldout=heldout)


def _mnist_mlp(task, model, heldout: bool = False):
    from tasks.optimizees import MnistMLP

    return MnistMLP(task.data[0], model.hidden, model.optimizee_activation, task.minibatch, heldout=heldout,
                    own_images=task.optimizee_images)


TASKS: dict[str, TaskSpec] = {
    "sinusoid": TaskSpec("regression", _sinusoid),
    "polynomial": TaskSpec("regression", _polynomial, takes_order=True),
    "omniglot": TaskSpec("images", _omniglot, channels=1, default_size=28,
                         data="folders or zips of <Alphabet>/<character>/*.png", read_folders=_read_omniglot,
                         inverted=True),
    "miniimagenet": TaskSpec("images", _miniimagenet, channels=3, default_size=84,
                             data="a folder of class sub-folders with train/val/test.csv",
                             read_folders=_read_miniimagenet),
    "synthetic_images": TaskSpec("images", _synthetic_images, channels=1, default_size=28),
    "quadratic": TaskSpec("optimizee", _quadratic),
    "mnist_mlp": TaskSpec("optimizee", _mnist_mlp,
                          data="the MNIST CSV (784 pixels + label a row, e.g. ../shared/data/mnist/mnist_5k.csv.gz) "
                          "or a torchvision MNIST root", data_files=1),
}


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task.name: unknown task {name!r}; allowed: {', '.join(TASKS)}") from None


def names(kind: str) -> tuple[str, ...]:
    """The task names of one kind, in table order."""
    return tuple(n for n, s in TASKS.items() if s.kind == kind)


def image_format(task_cfg) -> tuple[int, int]:
    """(channels, side in pixels) of an image task's inputs, from its config alone (no data read)."""
    spec = task_spec(task_cfg.name)
    if spec.kind != "images":
        raise ValueError(f"task.name: {task_cfg.name!r} is not an image task")
    return spec.channels, task_cfg.image_size or spec.default_size


def samples_on_device(task_cfg, device) -> bool:
    """task.sample_on: whether tasks are drawn with torch on `device` (True) or with numpy (False).
    auto: on an accelerator; on a CPU numpy is the faster of the two."""
    if task_cfg.sample_on == "auto":
        import torch

        return torch.device(device).type != "cpu"
    return task_cfg.sample_on == "device"


def make_distribution(task_cfg, model_cfg=None, **options):
    """Build the task distribution named by the `task` section of an experiment config (optimizee
    distributions also read the `model` section: the optimizee network, and take `heldout`: each
    training optimizee also draws data it never trains on, for train.meta_loss: heldout)."""
    return task_spec(task_cfg.name).build(task_cfg, model_cfg, **options)
