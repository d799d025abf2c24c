from setuptools import find_packages, setup

setup(
    name="metatrain",
    version="0.1.0",
    description="Distributed gradient-based meta-training (MAML, Meta-SGD, T-nets, MT-nets, "
    "Meta-Curvature) with torch.func, Ray, Ray Tune and MLflow",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "tasks", "tasks.*"]),
    include_package_data=True,
    install_requires=[
        # torch/torchvision: ranges that admit the releases on this machine's disk (2.14.1 / 0.29.1).
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "matplotlib>=3.8",
        "ray[default,tune]>=2.58,<2.61",
        # mlflow 3.18 does not resolve here (needs mlflow-skinny 3.18); 3.17.x works with Ray 2.60.
        "mlflow>=3.17,<3.18",
        "pyarrow>=15",
        "optuna>=3.6",  # the optional Optuna search algorithm of `metatrain sweep`
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "psutil>=5.9"]},
    entry_points={"console_scripts": ["metatrain=pipeline.cli:main"]},
)
