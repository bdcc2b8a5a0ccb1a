"""SonoGym: GPU-parallel robotic-ultrasound simulation gym.

The default install is light (kinematic backend). The Isaac Lab 3.0 backend is an extra:
``pip install -e .[isaaclab]``. Pins are chosen to resolve together with ``isaaclab==3.0.0``.
"""

from setuptools import find_packages, setup

setup(
    name="sonogym",
    version="0.1.0",
    description="GPU-parallel robotic-ultrasound simulation gym (Warp ultrasound, batched robots, Gymnasium tasks)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.12,<3.13",
    packages=find_packages(include=["sonogym", "sonogym.*"])
    + ["sonogym.tasks", "sonogym.policies", "sonogym.assets"],
    package_dir={"sonogym.tasks": "tasks", "sonogym.policies": "policies", "sonogym.assets": "assets"},
    package_data={"sonogym.assets": ["*.yaml", "*.json", "*.npz", "*.urdf"]},
    install_requires=[
        "torch==2.11.0",
        "warp-lang==1.17.0",
        "rsl-rl-lib==5.5.1",
        "gymnasium==1.4.0",
        "stable-baselines3>=2.6,<3",
        "numpy>=2.0,<3",
        "scipy>=1.13",
        "scikit-image>=0.24",
        "SimpleITK>=2.4,<3",
        "trimesh>=4.4",
        "matplotlib>=3.9",
        "pyyaml>=6",
        "tqdm>=4.66",
    ],
    extras_require={
        "isaaclab": ["isaaclab==3.0.0"],
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
    },
    entry_points={"console_scripts": ["sonogym=sonogym.cli:main"]},
)
