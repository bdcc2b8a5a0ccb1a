"""Synthetic tissue volumes, tissue tables and probe poses for the ultrasound physics tests.

A volume is a ``types.SimpleNamespace`` with what :class:`~sonogym.ultrasound.sensor.UltrasoundSensor`
reads from a patient: ``labels`` (uint8 [X, Y, Z]), ``hu`` (int16 [X, Y, Z]), ``spacing_m`` and
``name``. Voxel (i, j, k) is centred at (i, j, k) * spacing in the patient frame [m], so the face
between voxel layers k - 1 and k (where the class changes) lies at (k - 0.5) * spacing.

Volumes are built from class names: :func:`encode` picks, for each class, a TotalSegmentator label
that the tissue table maps to it, or (for a class no label maps to, e.g. fat) label 0 and an HU value
inside that class's HU bin, so that ``TissueTable.classify`` gives back exactly the requested classes.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import yaml

from sonogym.anatomy.tissues import TissueTable
from sonogym.ultrasound.poses import matrix_from_quat, quat_from_matrix


def custom_table(tmp_dir: Path, changes: dict[str, dict[str, float]], name: str = "tissues.yaml") -> TissueTable:
    """The shipped tissue table with per-class property changes, written to ``tmp_dir`` and loaded.

    ``changes`` maps a class name to ``{property: value}`` (properties as in ``assets/tissues.yaml``:
    speed_of_sound, density, impedance, attenuation, scatterer_density, scatter_amplitude). A change of
    impedance alone also sets the density to impedance * 1e6 / speed_of_sound, which the table requires.
    """
    source = Path(TissueTable.load().path)
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for cls, props in changes.items():
        entry = data["classes"][cls]
        for key, value in props.items():
            entry[key] = float(value)
        if "impedance" in props and "density" not in props:
            entry["density"] = float(props["impedance"]) * 1e6 / float(entry["speed_of_sound"])
    path = Path(tmp_dir) / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return TissueTable.load(path)


def class_codes(tissues: TissueTable, name: str) -> tuple[int, int]:
    """(label, HU) voxel values that ``tissues.classify`` maps to class ``name``."""
    cid = tissues.class_id(name)
    labels = [i for i in range(1, 256) if tissues.known_labels[i] and tissues.label_to_class[i] == cid]
    if labels:
        return labels[0], 0
    edges = [-3000.0, *[float(t) for t in tissues.hu_thresholds], 3000.0]
    for b, c in enumerate(tissues.hu_classes):
        if int(c) == cid:
            lo, hi = edges[b], edges[b + 1]
            return 0, int(round((lo + hi) / 2))
    raise ValueError(f"class {name!r} has neither a label nor an HU bin in {tissues.path}")


def encode(tissues: TissueTable, class_names: np.ndarray, names: list[str], spacing_m: float, name: str = "synthetic") -> types.SimpleNamespace:
    """A volume from an integer array of indices into ``names`` (class names)."""
    labels = np.zeros(class_names.shape, np.uint8)
    hu = np.zeros(class_names.shape, np.int16)
    for index, cls in enumerate(names):
        label, value = class_codes(tissues, cls)
        where = class_names == index
        labels[where] = label
        hu[where] = value
    volume = types.SimpleNamespace(labels=labels, hu=hu, spacing_m=float(spacing_m), name=name)
    classes = tissues.classify(labels, hu)
    for index, cls in enumerate(names):  # the encoding must give back the requested classes
        where = class_names == index
        assert np.all(classes[where] == tissues.class_id(cls)), f"class {cls} did not survive encoding"
    return volume


class Builder:
    """Paint boxes and spheres of tissue classes into a volume, then :meth:`build` it.

    Coordinates are in metres in the patient frame; a voxel belongs to a shape when its centre does.
    """

    def __init__(self, shape: tuple[int, int, int], spacing_m: float, fill: str = "soft_tissue") -> None:
        self.spacing_m = float(spacing_m)
        self.names = [fill]
        self.grid = np.zeros(shape, np.int16)

    def _index(self, cls: str) -> int:
        if cls not in self.names:
            self.names.append(cls)
        return self.names.index(cls)

    def centres(self, axis: int) -> np.ndarray:
        return np.arange(self.grid.shape[axis]) * self.spacing_m

    def box(self, cls: str, lo_m, hi_m) -> Builder:
        """Voxels with centres in [lo, hi) per axis (None = unbounded) become ``cls``."""
        sl = []
        for axis in range(3):
            c = self.centres(axis)
            lo = -np.inf if lo_m[axis] is None else lo_m[axis]
            hi = np.inf if hi_m[axis] is None else hi_m[axis]
            inside = np.flatnonzero((c >= lo - 1e-9) & (c < hi - 1e-9))
            sl.append(slice(inside[0], inside[-1] + 1) if inside.size else slice(0, 0))
        self.grid[tuple(sl)] = self._index(cls)
        return self

    def sphere(self, cls: str, centre_m, radius_m: float) -> Builder:
        """Voxels with centres within ``radius_m`` of ``centre_m`` become ``cls``."""
        x, y, z = np.meshgrid(self.centres(0), self.centres(1), self.centres(2), indexing="ij")
        d2 = (x - centre_m[0]) ** 2 + (y - centre_m[1]) ** 2 + (z - centre_m[2]) ** 2
        self.grid[d2 <= radius_m**2] = self._index(cls)
        return self

    def build(self, tissues: TissueTable, name: str = "synthetic") -> types.SimpleNamespace:
        return encode(tissues, self.grid, self.names, self.spacing_m, name)


def rotation(axis: str, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a coordinate axis ('x', 'y' or 'z')."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose(position_m, rot: np.ndarray | None = None) -> np.ndarray:
    """A probe pose [7]: face centre [m] and the quaternion (w, x, y, z) of ``rot`` (probe -> patient)."""
    rot = np.eye(3) if rot is None else np.asarray(rot, np.float64)
    q = quat_from_matrix(rot)
    assert np.allclose(matrix_from_quat(q), rot, atol=1e-9)
    return np.concatenate([np.asarray(position_m, np.float64), q])


def pose_seeing(point_m, probe_point_m, rot: np.ndarray) -> np.ndarray:
    """The pose with orientation ``rot`` that puts patient point ``point_m`` at probe-frame ``probe_point_m``."""
    position = np.asarray(point_m, np.float64) - np.asarray(rot, np.float64) @ np.asarray(probe_point_m, np.float64)
    return pose(position, rot)
