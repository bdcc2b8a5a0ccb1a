"""Patient models: CT, TotalSegmentator labels, skin surface and spine landmarks in one frame.

Patient frame
-------------
One right-handed frame in metres, used by everything in SonoGym that touches a patient:

* axes follow DICOM LPS: **x points to the patient's left, y posterior (out of the back), z
  superior (towards the head)**;
* the origin is the centre of voxel (0, 0, 0) of the processed volume, so voxel (i, j, k) is
  centred at ``(i, j, k) * spacing_m`` and every point of the patient has non-negative
  coordinates.

Files in any orientation (RAS NIfTI, LPS DICOM, ...) are converted once, at load. The scanner
position of the origin is kept in ``origin_lps_m`` for reference.

Processing (``from_files`` / ``from_arrays`` / ``from_phantom``)
-----------------------------------------------------------------
1. Body mask on the native grid (see :mod:`sonogym.anatomy.skin`); voxels outside the body
   (CT table, blankets, air) become air (-1000 HU, label 0); crop to the body plus a margin.
2. Resample to an isotropic grid (default 1 mm): HU linear, labels smooth or nearest
   (:mod:`sonogym.anatomy.resample`), the mask linear then thresholded at 0.5.
3. Skin: signed distance, closed mesh, placement maps for the back and the front.
4. Spine landmarks from the vertebra labels (:mod:`sonogym.anatomy.landmarks`).

The processed patient is saved to and loaded from a single ``.npz`` file (see :meth:`Patient.save`),
which the cache in :mod:`sonogym.anatomy.catalog` uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonogym.anatomy import skin as skin_mod
from sonogym.anatomy.labels import TOTALSEG_V2, VERTEBRA_IDS, vertebra_id, vertebra_name
from sonogym.anatomy.landmarks import ScrewTrajectory, Vertebra, find_vertebrae
from sonogym.anatomy.resample import resample, resample_labels
from sonogym.errors import DataError

FORMAT_VERSION = 1
"""Version of the processed-patient file layout; bump when processing changes."""

AIR_HU = -1000


@dataclass
class Patient:
    """A processed patient model in the patient frame (see the module docstring).

    Attributes:
        name: catalog name or a user-chosen name.
        hu: CT values [HU], int16, shape (X, Y, Z).
        labels: TotalSegmentator v2 ids, uint8, shape (X, Y, Z).
        spacing_m: isotropic voxel size [m].
        origin_lps_m: scanner LPS position of voxel (0, 0, 0) [m], shape (3,).
        sdf_q: signed distance to the skin in units of 0.1 mm, int16, shape (X, Y, Z), negative inside;
            use :meth:`signed_distance`.
        skin_vertices_m: skin mesh vertices [m], float32, shape (V, 3).
        skin_faces: skin mesh triangles, int32, shape (F, 3), normals out of the body.
        placement: probe-placement maps by side (``"posterior"``, ``"anterior"``).
        vertebrae: vertebrae found in the labels, cranial first.
        info: provenance and processing settings (JSON-serialisable).
    """

    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing_m: float
    origin_lps_m: np.ndarray
    sdf_q: np.ndarray
    skin_vertices_m: np.ndarray
    skin_faces: np.ndarray
    placement: dict[str, skin_mod.PlacementMap]
    vertebrae: tuple[Vertebra, ...]
    info: dict = field(default_factory=dict)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_files(
        cls,
        ct_path: str | os.PathLike,
        labels_path: str | os.PathLike,
        *,
        name: str | None = None,
        iso_spacing_m: float = 1e-3,
        smooth_labels: bool = True,
        label_map: dict[int, int] | None = None,
        progress: bool | None = None,
    ) -> Patient:
        """Load a CT [HU] and its TotalSegmentator label map from files and process them.

        Args:
            ct_path: CT volume (NIfTI, NRRD, MHA/MHD, or a DICOM series directory).
            labels_path: label map on the same grid as the CT.
            name: patient name (default: the CT file name).
            iso_spacing_m: isotropic voxel size of the processed patient [m].
            smooth_labels: smooth (per-structure linear) label resampling instead of nearest.
            label_map: file label id -> TotalSegmentator v2 id, for files numbered differently;
                ids not in the map are kept.
            progress: show a progress bar (None: only on a terminal).
        """
        from sonogym.anatomy.io import read_ct_and_labels

        ct, labels = read_ct_and_labels(ct_path, labels_path)
        label_array = labels.array
        if label_map:
            lut = np.arange(256, dtype=np.uint8)
            for src, dst in label_map.items():
                lut[src] = dst
            label_array = lut[label_array]
        return cls.from_arrays(
            ct.array, label_array, ct.spacing_m, name=name or Path(ct_path).name.split(".")[0],
            iso_spacing_m=iso_spacing_m, smooth_labels=smooth_labels, origin_lps_m=ct.origin_m,
            info={"ct_path": str(ct_path), "labels_path": str(labels_path)}, progress=progress,
        )

    @classmethod
    def from_arrays(
        cls,
        hu: np.ndarray,
        labels: np.ndarray,
        spacing_m: float | tuple[float, float, float],
        *,
        name: str = "arrays",
        iso_spacing_m: float | None = 1e-3,
        smooth_labels: bool = True,
        origin_lps_m: np.ndarray | None = None,
        crop_margin_m: float = 0.015,
        info: dict | None = None,
        progress: bool | None = None,
    ) -> Patient:
        """Build a patient from arrays in the LPS layout.

        Args:
            hu: CT values [HU], shape (X, Y, Z), axis 0 = left, 1 = posterior, 2 = superior.
            labels: TotalSegmentator v2 ids, integer, shape (X, Y, Z).
            spacing_m: voxel size [m], a float or (sx, sy, sz).
            iso_spacing_m: isotropic voxel size of the result [m]; None keeps an isotropic input grid.
            smooth_labels: smooth label resampling (see :mod:`sonogym.anatomy.resample`).
            origin_lps_m: scanner LPS position of voxel (0, 0, 0) [m].
            crop_margin_m: air kept around the body when cropping [m].
            info: extra provenance stored in :attr:`info`.
            progress: show a progress bar (None: only on a terminal).
        """
        from tqdm.auto import tqdm

        hu, labels, spacing = _check_arrays(hu, labels, spacing_m)
        if iso_spacing_m is None:
            if not np.allclose(spacing, spacing[0], rtol=1e-4):
                raise DataError(f"voxel spacing {spacing.tolist()} m is anisotropic; pass iso_spacing_m to resample it.")
            iso_spacing_m = float(spacing[0])
        if not 1e-4 <= iso_spacing_m <= 1e-2:
            raise DataError(f"iso_spacing_m={iso_spacing_m} m is outside 0.1..10 mm; give the voxel size in metres (1 mm = 1e-3).")
        origin = np.zeros(3) if origin_lps_m is None else np.asarray(origin_lps_m, dtype=np.float64)
        timings: dict[str, float] = {}
        steps = ["body mask", "resample", "skin", "landmarks"]
        bar = tqdm(total=len(steps), desc=f"patient {name}", disable=(None if progress is None else not progress), leave=False)

        def step(label: str, start: float) -> float:
            timings[label] = round(time.perf_counter() - start, 3)
            bar.update(1)
            bar.set_postfix_str(label)
            return time.perf_counter()

        t = time.perf_counter()
        mask = skin_mod.body_mask(hu, labels, spacing)
        if not mask.any():
            raise DataError(
                f"patient {name}: empty body mask (no voxel above {skin_mod.BODY_HU_THRESHOLD:.0f} HU). "
                "Is the CT in Hounsfield units? A CT of air or a label map passed as the CT gives this."
            )
        box = _crop_box(mask, spacing, crop_margin_m)
        hu = np.where(mask[box], hu[box], AIR_HU).astype(np.float32)
        labels = np.where(mask[box], labels[box], 0).astype(np.uint8)
        origin = origin + np.array([s.start for s in box]) * spacing
        t = step("body mask", t)

        same_grid = np.allclose(spacing, iso_spacing_m, rtol=1e-4)
        if same_grid:
            body = mask[box]
        else:
            hu = resample(hu, spacing, iso_spacing_m, linear=True)
            labels = resample_labels(labels, spacing, iso_spacing_m, smooth=smooth_labels)
            body = resample(mask[box].astype(np.float32), spacing, iso_spacing_m, linear=True) >= 0.5
        # The skin is the 0.5 level of the lightly smoothed mask; the mask is re-derived from it so
        # that mesh, maps and signed distance all describe one surface (thin protrusions such as
        # ECG leads on the skin are smoothed away).
        field_ = skin_mod.skin_field(body | (labels > 0))
        body = field_ >= 0.5
        hu = np.where(body, np.clip(np.round(hu), -1024, 3071), AIR_HU).astype(np.int16)
        t = step("resample", t)

        sdf_q = skin_mod.signed_distance_q(body, iso_spacing_m)
        vertices, faces = skin_mod.skin_mesh(field_, iso_spacing_m)
        placement = {side: skin_mod.placement_map(field_, iso_spacing_m, side) for side in skin_mod.SIDES}
        t = step("skin", t)

        vertebrae = tuple(find_vertebrae(labels, iso_spacing_m))
        step("landmarks", t)
        bar.close()

        info = dict(info or {})
        info.update(
            input_spacing_m=[float(s) for s in spacing], iso_spacing_m=float(iso_spacing_m),
            smooth_labels=bool(smooth_labels), crop_margin_m=float(crop_margin_m), timings_s=timings,
            format_version=FORMAT_VERSION,
        )
        return cls(
            name=name, hu=hu, labels=labels, spacing_m=float(iso_spacing_m), origin_lps_m=origin, sdf_q=sdf_q,
            skin_vertices_m=vertices, skin_faces=faces, placement=placement, vertebrae=vertebrae, info=info,
        )

    @classmethod
    def from_phantom(cls, seed: int, *, iso_spacing_m: float = 1e-3, small: bool = False, progress: bool | None = None) -> Patient:
        """Procedural lumbar-spine phantom ``phantom-<seed>`` (see :mod:`sonogym.anatomy.phantom`)."""
        from sonogym.anatomy.phantom import phantom_arrays

        hu, labels = phantom_arrays(seed, spacing_m=iso_spacing_m, small=small)
        name = f"phantom-{seed}" + ("-small" if small else "")
        return cls.from_arrays(
            hu, labels, iso_spacing_m, name=name, iso_spacing_m=iso_spacing_m,
            info={"phantom_seed": int(seed), "phantom_small": bool(small)}, progress=progress,
        )

    # ----------------------------------------------------------------- queries
    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (X, Y, Z) in voxels."""
        return tuple(self.hu.shape)

    @property
    def extent_m(self) -> np.ndarray:
        """Position of the last voxel centre [m], shape (3,); the volume spans [0, extent]."""
        return (np.asarray(self.hu.shape) - 1) * self.spacing_m

    @property
    def body_mask(self) -> np.ndarray:
        """Boolean body mask, shape (X, Y, Z) (computed from the signed distance)."""
        return self.sdf_q < 0

    @property
    def nbytes(self) -> int:
        """Memory held by the patient's arrays [bytes]."""
        arrays = [self.hu, self.labels, self.sdf_q, self.skin_vertices_m, self.skin_faces]
        arrays += [a for m in self.placement.values() for a in (m.height_m, m.normal, m.valid)]
        return int(sum(a.nbytes for a in arrays))

    def labels_present(self) -> dict[int, int]:
        """Label id -> voxel count for every structure in the volume (0 excluded)."""
        counts = np.bincount(self.labels.ravel(), minlength=256)
        return {int(i): int(counts[i]) for i in np.flatnonzero(counts) if i > 0}

    def signed_distance(self, points_m: np.ndarray) -> np.ndarray:
        """Signed distance to the skin [m] at points [..., 3] [m]: negative inside the body."""
        return skin_mod.trilinear(self.sdf_q, points_m, self.spacing_m) * skin_mod.SDF_UNIT_M

    def skin_mesh(self):
        """The skin surface as a ``trimesh.Trimesh`` (metres, patient frame, outward normals)."""
        import trimesh

        return trimesh.Trimesh(self.skin_vertices_m, self.skin_faces, process=False)

    def vertebra(self, name: str) -> Vertebra:
        """The vertebra called ``name`` (e.g. ``"L4"``), with a clear error if it is not there."""
        label = vertebra_id(name)
        if not self.vertebrae:
            raise DataError(
                f"patient {self.name} has no vertebra labels (TotalSegmentator ids 26..50), so spine landmarks are "
                "unavailable. Use a label map from TotalSegmentator's 'total' task that includes the vertebrae."
            )
        for vertebra in self.vertebrae:
            if vertebra.label == label:
                return vertebra
        found = ", ".join(v.name for v in self.vertebrae)
        raise DataError(f"patient {self.name} has no vertebra {name}; it has {found}.")

    def summary(self) -> str:
        """Human-readable summary: shape, spacing, labels, vertebrae, memory."""
        present = self.labels_present()
        mb = 1 / 2**20
        lines = [
            f"patient        {self.name}",
            f"shape          {self.shape[0]} x {self.shape[1]} x {self.shape[2]} voxels (x=left, y=posterior, z=superior)",
            f"spacing        {self.spacing_m * 1e3:.2f} mm isotropic; extent "
            + " x ".join(f"{e * 100:.1f}" for e in self.extent_m) + " cm",
            f"HU range       {int(self.hu.min())} .. {int(self.hu.max())}",
            f"labels         {len(present)} structures: "
            + ", ".join(TOTALSEG_V2.get(i, f"unknown-{i}") for i in sorted(present)[:12])
            + (" ..." if len(present) > 12 else ""),
            f"skin mesh      {len(self.skin_vertices_m)} vertices, {len(self.skin_faces)} faces",
            f"vertebrae      " + (", ".join(v.name + ("" if v.complete else "*") for v in self.vertebrae) or "none")
            + ("   (* = cut off by the scan)" if any(not v.complete for v in self.vertebrae) else ""),
            f"screw plans    {sum(len(v.screws) for v in self.vertebrae)} trajectories",
            f"memory         {self.nbytes * mb:.1f} MiB",
        ]
        return "\n".join(lines)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the patient to one ``.npz`` file atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "hu": self.hu, "labels": self.labels, "sdf_q": self.sdf_q, "origin_lps_m": self.origin_lps_m,
            "skin_vertices_m": self.skin_vertices_m, "skin_faces": self.skin_faces,
        }
        for side, m in self.placement.items():
            arrays.update({f"placement_{side}_height_m": m.height_m, f"placement_{side}_normal": m.normal,
                           f"placement_{side}_valid": m.valid})
        meta = {
            "format_version": FORMAT_VERSION, "name": self.name, "spacing_m": self.spacing_m, "info": self.info,
            "sides": list(self.placement), "vertebrae": [_to_jsonable(v) for v in self.vertebrae],
        }
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patient:
        """Read a patient written by :meth:`save`; raises :class:`DataError` on a stale or corrupt file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta_json"]).decode())
                if meta.get("format_version") != FORMAT_VERSION:
                    raise DataError(f"{path}: processed-patient format {meta.get('format_version')} is stale "
                                    f"(current {FORMAT_VERSION}); delete it and load the patient again.")
                arrays = {k: data[k] for k in data.files if k != "meta_json"}
        except DataError:
            raise
        except Exception as err:  # zip, key or JSON errors all mean a corrupt file
            raise DataError(f"{path}: corrupt processed-patient file ({err}); delete it and load the patient again.") from None
        placement = {
            side: skin_mod.PlacementMap(side, arrays[f"placement_{side}_height_m"], arrays[f"placement_{side}_normal"],
                                        arrays[f"placement_{side}_valid"], meta["spacing_m"])
            for side in meta["sides"]
        }
        return cls(
            name=meta["name"], hu=arrays["hu"], labels=arrays["labels"], spacing_m=meta["spacing_m"],
            origin_lps_m=arrays["origin_lps_m"], sdf_q=arrays["sdf_q"], skin_vertices_m=arrays["skin_vertices_m"],
            skin_faces=arrays["skin_faces"], placement=placement,
            vertebrae=tuple(_vertebra_from_json(v) for v in meta["vertebrae"]), info=meta["info"],
        )


def _check_arrays(hu, labels, spacing_m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate array inputs of :meth:`Patient.from_arrays`."""
    from sonogym.anatomy.io import label_array, spacing_array

    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if hu.ndim != 3:
        raise DataError(f"hu must be a 3-D array (X, Y, Z), got shape {hu.shape}.")
    if labels.shape != hu.shape:
        raise DataError(f"hu and labels differ in shape: {hu.shape} vs {labels.shape}; both must be on one grid.")
    if hu.dtype.kind not in "iuf":
        raise DataError(f"hu has dtype {hu.dtype}; expected numbers in Hounsfield units.")
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise DataError("hu holds NaN or infinite values; replace them (e.g. with -1000 HU, air) first.")
    return hu, label_array(labels, "labels array"), spacing_array(spacing_m)


def _crop_box(mask: np.ndarray, spacing: np.ndarray, margin_m: float) -> tuple[slice, slice, slice]:
    """Bounding box of the mask plus a margin, clipped to the volume."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        pad = int(np.ceil(margin_m / spacing[axis]))
        box.append(slice(max(idx[0] - pad, 0), min(idx[-1] + pad + 1, mask.shape[axis])))
    return tuple(box)


def _to_jsonable(obj):
    """Dataclasses, tuples and numpy values to plain JSON types."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _vertebra_from_json(data: dict) -> Vertebra:
    screws = tuple(
        ScrewTrajectory(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in s.items()}) for s in data["screws"]
    )
    fields = {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items() if k != "screws"}
    return Vertebra(**fields, screws=screws)


__all__ = ["Patient", "Vertebra", "ScrewTrajectory", "VERTEBRA_IDS", "vertebra_name"]
