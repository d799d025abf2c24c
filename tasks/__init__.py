"""Task distributions and the one sampling path (`tasks.sampling.sample_batch`)."""
from tasks.regression import Polynomial, Sinusoid
from tasks.synthetic import SyntheticImages

TASKS = ("sinusoid", "polynomial", "omniglot", "miniimagenet", "synthetic_images", "quadratic", "mnist_mlp")
IMAGE_DATASETS = ("omniglot", "miniimagenet")
OPTIMIZEES = ("quadratic", "mnist_mlp")  # optimizee distributions of learned optimizers (tasks/optimizees.py)


def image_format(task_cfg) -> tuple[int, int]:
    """(channels, side in pixels) of an image task's inputs, from its config alone (no data read)."""
    if task_cfg.name == "omniglot":
        from tasks.omniglot import DEFAULT_SIZE

        return 1, task_cfg.image_size or DEFAULT_SIZE
    if task_cfg.name == "miniimagenet":
        from tasks.miniimagenet import DEFAULT_SIZE

        return 3, task_cfg.image_size or DEFAULT_SIZE
    if task_cfg.name == "synthetic_images":
        return SyntheticImages.channels, SyntheticImages.image_size
    raise ValueError(f"task.name: {task_cfg.name!r} is not an image task")


def make_distribution(task_cfg):
    """Build the task distribution named by the `task` section of an experiment config."""
    if task_cfg.name == "sinusoid":
        return Sinusoid()
    if task_cfg.name == "polynomial":
        return Polynomial(order=task_cfg.order)
    if task_cfg.name == "omniglot":
        from tasks.omniglot import omniglot

        return omniglot(task_cfg)
    if task_cfg.name == "miniimagenet":
        from tasks.miniimagenet import miniimagenet

        return miniimagenet(task_cfg)
    if task_cfg.name == "synthetic_images":
        return SyntheticImages(ways=task_cfg.ways)
    raise ValueError(f"task.name: unknown task {task_cfg.name!r}; allowed: {', '.join(TASKS)}")
