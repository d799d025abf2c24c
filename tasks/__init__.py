"""Task distributions and the one sampling path (`tasks.sampling.sample_batch`)."""
from tasks.regression import Polynomial, Sinusoid
from tasks.synthetic import SyntheticImages

TASKS = ("sinusoid", "polynomial", "omniglot", "miniimagenet", "synthetic_images", "quadratic", "mnist_mlp")
IMAGE_DATASETS = ("omniglot", "miniimagenet")
OPTIMIZEES = ("quadratic", "mnist_mlp")  # optimizee distributions of learned optimizers (tasks/optimizees.py)


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
