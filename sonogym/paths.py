"""Locating the data files SonoGym ships (``assets/*.yaml``).

In a source checkout or an editable install the files sit in ``<repo>/assets/``; a normal install
ships them as package data under ``sonogym/assets/``. :func:`asset_path` looks in both places.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_REPO_ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset_path(name: str) -> Path:
    """Path of the shipped asset file ``name`` (e.g. ``"tissues.yaml"``).

    Looks first in the repository's ``assets/`` folder, then in the installed package's
    ``sonogym/assets/`` package data.

    Raises:
        FileNotFoundError: the file is in neither place; the message lists where it looked.
    """
    candidates: list[Path] = [_REPO_ASSETS / name]
    try:
        packaged = resources.files("sonogym") / "assets" / name
    except (ModuleNotFoundError, TypeError, ValueError):
        packaged = None
    if packaged is not None:
        candidates.append(Path(str(packaged)))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"SonoGym asset {name!r} not found (looked in: {looked}). In a source checkout it belongs in "
        f"the repository's assets/ folder; for an installed package, reinstall sonogym so that its "
        f"package data (sonogym/assets/*.yaml) is included."
    )
