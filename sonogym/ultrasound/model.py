"""Parameters of the B-mode model, and the per-class and per-patient tables both renderers use.

The model itself is described in :mod:`sonogym.ultrasound` (the package docstring). This module
holds what the Warp kernels (:mod:`sonogym.ultrasound.kernels`) and the torch reference
(:mod:`sonogym.ultrasound.reference`) share, so that the two compute the same thing:

* :class:`UltrasoundModel`: the tunable parameters, in physical units;
* :func:`class_tables`: per-tissue-class arrays for one probe (impedance, attenuation per sample
  step, scatter gain, scatterer density);
* :class:`PackedPatients`: the tissue-class volumes of several patients in one flat buffer, with a
  per-voxel "mixed cell" flag (see :func:`pack_classes`).
* the speckle hash constants.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sonogym.anatomy.tissues import TissueTable
from sonogym.errors import DataError

MIXED_FLAG = 0x80
"""Bit set in a packed class voxel when the cell from that voxel to voxel + (1, 1, 1) holds more than one class."""

CLASS_MASK = 0x7F

# Speckle hash (see kernels.speckle / reference.speckle): lattice node (i, j, k) of seed s hashes
# to fin(i*HX + j*HY + k*HZ + s*HS) on uint32 with wrap-around; all constants are < 2**31.
HASH_X = 0x6A09E667
HASH_Y = 0x3C6EF372
HASH_Z = 0x1F83D9AB
HASH_SEED = 0x5BE0CD19
HASH_M1 = 0x7FEB352D
HASH_M2 = 0x1B873593
DENSITY_LEVELS = 16
"""A lattice node holds a scatterer when its 4-bit hash field is below round(density * 16)."""

PSF_RADIUS = 3
"""Largest PSF half-width [samples or lines]; wider Gaussians are truncated there (and renormalised)."""

DEAD_AMPLITUDE = 1e-6
"""Round-trip amplitude (-120 dB) below which a scan line is cut off: later samples are zero."""


@dataclass(frozen=True)
class UltrasoundModel:
    """Parameters of the B-mode model, in physical units.

    Attributes:
        dynamic_range_db: displayed dynamic range [dB]; envelope levels ``gain_db - dynamic_range_db``
            below full scale and lower are black.
        gain_db: overall receive gain [dB]: an echo of envelope amplitude ``10**(-gain_db/20)`` is white.
        tgc_db_cm_mhz: time-gain compensation [dB/(cm MHz)]: depth d is amplified by
            ``2 * tgc_db_cm_mhz * f * d`` dB, i.e. it undoes the round-trip attenuation of a medium with
            this attenuation coefficient; 0 turns TGC off.
        scatter_db: diffuse-scatter level [dB] of a tissue with ``scatter_amplitude = 1`` relative to
            the echo of a perfect (R = 1) reflector.
        specular_exponent: echo intensity of an interface is ``R * |cos(theta)|**specular_exponent``
            for the angle theta between the beam and the surface normal.
        speckle_cell_m: lattice spacing of the scatterer field in the patient frame [m].
        coupling_impedance_mrayl: impedance of the probe lens and gel at the face [MRayl]; air at the
            face reflects almost everything back, so an uncoupled probe sees nothing.
        gel_m: thickness of the coupling-gel layer [m]: when the face touches tissue somewhere (at its
            first, middle or last scan line), air between the face and the skin up to this depth counts
            as gel (impedance ``coupling_impedance_mrayl``, no attenuation, no echo), as when a
            sonographer fills the furrow over the spine with gel. A probe held off the skin gets no
            gel and sees nothing; deeper gaps leave black columns.
        noise_floor_db: electronic noise floor relative to full scale [dB], added in quadrature to the
            envelope; None for none.
        seed: selects the scatterer pattern (the same seed and pose give the same image).
    """

    dynamic_range_db: float = 60.0
    gain_db: float = 6.0
    tgc_db_cm_mhz: float = 0.5
    scatter_db: float = -20.0
    specular_exponent: float = 2.0
    speckle_cell_m: float = 0.4e-3
    coupling_impedance_mrayl: float = 1.54
    gel_m: float = 8e-3
    noise_floor_db: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.dynamic_range_db) and 1.0 <= self.dynamic_range_db <= 200.0):
            problems.append(f"dynamic_range_db={self.dynamic_range_db} (1..200 dB)")
        if not math.isfinite(self.gain_db):
            problems.append(f"gain_db={self.gain_db} (must be finite)")
        if not (math.isfinite(self.tgc_db_cm_mhz) and 0.0 <= self.tgc_db_cm_mhz <= 10.0):
            problems.append(f"tgc_db_cm_mhz={self.tgc_db_cm_mhz} (0..10 dB/(cm MHz))")
        if not (math.isfinite(self.scatter_db) and self.scatter_db <= 20.0):
            problems.append(f"scatter_db={self.scatter_db} (a finite level in dB, at most 20)")
        if not (math.isfinite(self.specular_exponent) and 0.0 <= self.specular_exponent <= 64.0):
            problems.append(f"specular_exponent={self.specular_exponent} (0..64)")
        if not (math.isfinite(self.speckle_cell_m) and 2e-5 <= self.speckle_cell_m <= 5e-3):
            problems.append(f"speckle_cell_m={self.speckle_cell_m} (0.02..5 mm, in metres)")
        if not (math.isfinite(self.coupling_impedance_mrayl) and self.coupling_impedance_mrayl > 0):
            problems.append(f"coupling_impedance_mrayl={self.coupling_impedance_mrayl} (must be positive)")
        if not (math.isfinite(self.gel_m) and 0.0 <= self.gel_m <= 0.05):
            problems.append(f"gel_m={self.gel_m} (0..0.05 m)")
        if self.noise_floor_db is not None and not math.isfinite(self.noise_floor_db):
            problems.append(f"noise_floor_db={self.noise_floor_db} (a finite level in dB, or None)")
        if int(self.seed) != self.seed or not 0 <= self.seed < 2**31:
            problems.append(f"seed={self.seed} (an integer 0..2**31-1)")
        if problems:
            raise ValueError("invalid UltrasoundModel: " + "; ".join(problems))

    def replace(self, **changes) -> UltrasoundModel:
        return dataclasses.replace(self, **changes)

    def noise_floor_amplitude(self) -> float:
        """Noise-floor envelope amplitude (before gain); 0 when there is none."""
        if self.noise_floor_db is None:
            return 0.0
        return 10.0 ** ((self.noise_floor_db - self.gain_db) / 20.0)

    def tgc_db_per_m(self, frequency_mhz: float) -> float:
        """TGC slope for a probe frequency [dB/m]."""
        return 2.0 * self.tgc_db_cm_mhz * frequency_mhz * 100.0


@dataclass(frozen=True)
class ClassTables:
    """Per-tissue-class arrays for one probe, float32 [C + 1] unless noted; the extra last entry is
    the coupling gel (impedance of the lens, no attenuation, no scatter).

    Attributes:
        impedance: acoustic impedance [MRayl].
        attenuation_step: round-trip amplitude factor over one sample step, ``10**(-2 alpha f dt / 20)``.
        scatter_gain: diffuse-scatter amplitude relative to an R = 1 echo, including the
            1/sqrt(node density) that keeps the mean scattered power independent of the density.
        density_threshold: int32 [C], a node scatters when its 4-bit hash field is below this.
        air_class: class id of air (outside the volume).
        gel_class: class id of the coupling gel (C).
    """

    impedance: np.ndarray
    attenuation_step: np.ndarray
    scatter_gain: np.ndarray
    density_threshold: np.ndarray
    air_class: int
    gel_class: int


def class_tables(tissues: TissueTable, probe, model: UltrasoundModel) -> ClassTables:
    """Per-class arrays for ``probe`` (frequency, sample step) under ``model``."""
    step_cm = probe.sample_step_m * 100.0
    alpha = np.asarray(tissues.attenuation_db_cm_mhz, dtype=np.float64)
    attenuation_step = 10.0 ** (-2.0 * alpha * probe.frequency_mhz * step_cm / 20.0)
    threshold = np.round(np.asarray(tissues.scatterer_density, np.float64) * DENSITY_LEVELS).astype(np.int32)
    amplitude = np.asarray(tissues.scatter_amplitude, np.float64)
    threshold = np.where(amplitude > 0, np.maximum(threshold, np.where(np.asarray(tissues.scatterer_density) > 0, 1, 0)), 0)
    fraction = np.maximum(threshold, 1) / DENSITY_LEVELS
    gain = 10.0 ** (model.scatter_db / 20.0) * amplitude / np.sqrt(fraction)
    gain = np.where(threshold > 0, gain, 0.0)
    return ClassTables(
        impedance=np.append(tissues.impedance_mrayl, model.coupling_impedance_mrayl).astype(np.float32),
        attenuation_step=np.append(attenuation_step, 1.0).astype(np.float32),
        scatter_gain=np.append(gain, 0.0).astype(np.float32),
        density_threshold=np.append(threshold, 0).astype(np.int32),
        air_class=tissues.class_id("air"),
        gel_class=len(tissues.names),
    )


def pack_classes(classes: np.ndarray) -> np.ndarray:
    """Tissue classes (uint8 [X, Y, Z], < 128) with :data:`MIXED_FLAG` set on voxels whose cell is mixed.

    The cell of voxel (i, j, k) is the cube of the 8 voxels (i..i+1, j..j+1, k..k+1), the support of
    trilinear interpolation. A cell that touches the far faces of the volume counts as mixed (its
    outer corners are air).
    """
    if classes.max(initial=0) > CLASS_MASK:
        raise DataError(f"tissue class ids must be < {CLASS_MASK + 1} to leave room for the mixed-cell flag")
    c = classes
    uniform = np.zeros(c.shape, bool)
    inner = c[:-1, :-1, :-1]
    same = np.ones(inner.shape, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    same &= inner == c[dx:dx + inner.shape[0], dy:dy + inner.shape[1], dz:dz + inner.shape[2]]
    uniform[:-1, :-1, :-1] = same
    return (c | np.where(uniform, 0, MIXED_FLAG).astype(np.uint8)).astype(np.uint8)


@dataclass
class PackedPatients:
    """Tissue-class (and optionally label) volumes of P patients in flat buffers.

    Attributes:
        names: patient names, [P].
        classes: packed class voxels (class id | mixed flag), uint8 [V] (all patients, x-major).
        labels: TotalSegmentator ids, uint8 [V], or None when label slices are not needed.
        offsets: start of each patient in the flat buffers, int32 [P].
        dims: volume shape (X, Y, Z) of each patient, int32 [P, 3].
        spacing_m: isotropic voxel size of each patient [m], float32 [P].
    """

    names: list[str]
    classes: np.ndarray
    labels: np.ndarray | None
    offsets: np.ndarray
    dims: np.ndarray
    spacing_m: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.classes.nbytes + (0 if self.labels is None else self.labels.nbytes))

    @classmethod
    def from_patients(cls, patients: Sequence, tissues: TissueTable, *, with_labels: bool = False) -> PackedPatients:
        """Pack patients (objects with ``labels``, ``hu`` [X, Y, Z] and ``spacing_m``, e.g. :class:`~sonogym.anatomy.Patient`)."""
        if len(patients) == 0:
            raise ValueError("no patients given; pass at least one Patient")
        names, classes, labels, dims, spacing = [], [], [], [], []
        for i, patient in enumerate(patients):
            name = getattr(patient, "name", f"patient {i}")
            for attr in ("labels", "hu", "spacing_m"):
                if not hasattr(patient, attr):
                    raise TypeError(f"patients[{i}] ({type(patient).__name__}) has no {attr!r}; pass sonogym Patient objects")
            lab = np.asarray(patient.labels)
            hu = np.asarray(patient.hu)
            if lab.ndim != 3 or lab.shape != hu.shape:
                raise DataError(f"patient {name!r}: labels {lab.shape} and hu {hu.shape} must be the same 3-D grid")
            sp = float(np.asarray(patient.spacing_m).ravel()[0])
            if not (np.isfinite(sp) and 1e-4 <= sp <= 1e-2):
                raise DataError(f"patient {name!r}: spacing_m={sp} is not a voxel size in metres (0.1..10 mm)")
            names.append(str(name))
            classes.append(pack_classes(tissues.classify(lab, hu)).ravel())
            if with_labels:
                labels.append(lab.astype(np.uint8, copy=False).ravel())
            dims.append(lab.shape)
            spacing.append(sp)
        sizes = np.array([c.size for c in classes], np.int64)
        if sizes.sum() >= 2**31:
            raise DataError(f"{sizes.sum()} voxels in total do not fit 32-bit indexing; pack fewer or coarser patients")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        return cls(
            names=names,
            classes=np.concatenate(classes),
            labels=np.concatenate(labels) if with_labels else None,
            offsets=offsets,
            dims=np.array(dims, np.int32),
            spacing_m=np.array(spacing, np.float32),
        )
