from pathlib import Path

from setuptools import find_packages, setup


def requirements() -> list[str]:
    """requirements.txt: one list for the package and for the jobs `metatrain submit` sends."""
    lines = (Path(__file__).parent / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]


setup(
    name="metatrain",
    version="0.1.0",
    description="Distributed gradient-based meta-training (MAML, Meta-SGD, T-nets, MT-nets, "
    "Meta-Curvature, Meta-Learner LSTM) with torch.func, Ray, Ray Tune and MLflow",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "tasks", "tasks.*"]),
    include_package_data=True,
    install_requires=requirements(),
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "psutil>=5.9", "ruff>=0.6"]},
    entry_points={"console_scripts": ["metatrain=pipeline.cli:run"]},
)
