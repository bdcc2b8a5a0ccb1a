"""SonoGym: GPU-parallel robotic-ultrasound simulation gym.

Importing ``sonogym`` has no side effects: heavy modules (Warp kernels, torch, Isaac Lab) are
imported only by the subpackages that need them.
"""

__version__ = "0.1.0"

from sonogym.errors import DataError, FetchError, MissingDependencyError, SonoGymError

__all__ = ["DataError", "FetchError", "MissingDependencyError", "SonoGymError", "__version__"]
