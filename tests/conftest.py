"""Shared fixtures. Tests run on the CPU; real-CT tests skip when the data is not fetched."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start thread pools; 2-core CI machines

import pytest

TEST_SPACING_M = 2e-3
"""Voxel size used for patients in tests [m]: four times fewer voxels than the 1 mm default."""


@pytest.fixture(scope="session")
def phantom_patient():
    """Small procedural phantom (L2-L4 segment) at the test spacing, built once per session."""
    from sonogym.anatomy.patient import Patient

    return Patient.from_phantom(0, iso_spacing_m=TEST_SPACING_M, small=True)


def real_patient(name: str):
    """A real catalog CT at the test spacing (from the cache after the first run); skips if not fetched."""
    from sonogym.anatomy.catalog import load_patient
    from sonogym.anatomy.fetch import is_fetched

    if not is_fetched(name):
        pytest.skip(f"{name} not fetched; run `bash scripts/setup.sh`")
    return load_patient(name, iso_spacing_m=TEST_SPACING_M)


@pytest.fixture(scope="session")
def ct_chest():
    return real_patient("ct-chest")


@pytest.fixture(scope="session")
def ct_abdomen():
    return real_patient("ct-abdomen")
