"""Spine landmarks from TotalSegmentator vertebra labels: centroids, local axes, spinal canal and
planned pedicle-screw trajectories.

Input is a uint8 label volume ``[X, Y, Z]`` with TotalSegmentator v2 ids (vertebrae C1..S1 =
50..26, spinal cord = 79) in the LPS patient frame: axis 0 = x toward the patient's left, axis 1
= y toward posterior, axis 2 = z toward superior; voxel ``(i, j, k)`` has its centre at
``(i, j, k) * spacing`` metres. Every output point and vector is in that frame, in metres.

Method
------
1. **Centroid.** Each vertebra label is reduced to its main 26-connected parts (components of at
   least 10 % of the largest one; stray fragments elsewhere in the scan are dropped) and the
   centroid is the mean of the remaining voxel centres. Labels with fewer than ``min_voxels``
   voxels are ignored. A vertebra touching the border of the volume is cut off by the scan: it is
   reported with ``complete=False`` and gets no screws.
2. **Cranial axis.** Tangent of the spine curve through the vertebra centroids: central
   difference of the neighbouring centroids (one-sided at the ends, +z for a single vertebra),
   oriented toward +z. Only complete vertebrae define the curve when there are two or more of
   them (the centroid of a cut-off vertebra is biased toward the part inside the scan); an
   incomplete vertebra takes the tangent at its nearest complete neighbour.
3. **Spinal canal.** The vertebra's voxels are projected along the cranial axis onto a 2-D
   occupancy image (pixel = smallest voxel spacing). Small gaps are closed (disk radius 1 mm,
   then 2, 3, 5 mm while no hole of at least ``MIN_CANAL_AREA_M2`` appears) and holes filled;
   the canal is the largest enclosed hole. Its centroid, placed at the height of the vertebra
   centroid, is the canal centre and ``sqrt(area / pi)`` the canal radius. If the ring stays open,
   the spinal cord label (79) inside the vertebra's extent gives the centre and (a smaller)
   radius, and no screws are planned.
4. **Posterior and left axes.** Posterior = from the centroid of the bone anterior to the canal
   (the body) to the canal centre, made orthogonal to the cranial axis (computed twice, the
   second time with the "anterior" side from the first estimate). This is more robust than
   (canal centre - vertebra centroid): in upper thoracic vertebrae with long transverse and
   spinous processes the vertebra centroid lies almost in the canal. Left = posterior x cranial,
   so ``axes = [left, posterior, cranial]`` is a right-handed rotation and the identity for a
   straight, untilted spine. Without a canal, or if the estimate is more than 60 degrees from
   +y, the projection of +y is used.
5. **Pedicle screws** (complete T1..L5 vertebrae whose canal ring is closed). The vertebra mask
   is resampled trilinearly (threshold 0.5) onto a grid aligned with its axes (spacing = smallest
   voxel spacing, at most 1 mm); coordinates ``(a, b, c)`` = (left, posterior, cranial) from the
   centroid. The body is the largest component of bone anterior to the canal; its half-width is
   measured at mid-depth (away from transverse processes joining its back, as at L5).

   *Isthmus.* For each side, planes of constant ``b`` are scanned over the anterior 60 % of the
   canal's antero-posterior depth (the pars interarticularis and laminae lie behind). In each
   plane the bone on that side between the midline and the body's half-width (transverse
   processes are cut off) is split into connected components; the pedicle section is
   the largest component whose centre lies lateral to the canal (small lips of the body's rim
   next to the midline are skipped). The area profile is smoothed over 3 planes and the planes
   are tried from the smallest area up: a plane is skipped if its section does not overlap the
   neighbouring planes' sections (not part of a continuous bridge) or if the resulting
   trajectory fails the checks below (e.g. a narrow pars behind a short, wide L5 pedicle). The
   chosen section is re-sampled at a quarter of the grid spacing; its centroid (or the point
   deepest inside it, if the centroid falls outside) is the isthmus point and the maximum of its
   2-D distance transform, minus half a fine pixel, the corridor radius (slightly conservative).

   *Trajectory.* The screw points from the isthmus to a target in the body: the body centroid
   moved toward the screw's side by a quarter of the body half-width and anteriorly by half the
   body's half-depth (aiming at the body centroid itself, as first planned, let the 80 %-deep tip
   cross the midline). The entry is where the line, followed backward from the isthmus, leaves
   the bone of this vertebra (first gap of at least 2 mm); the length is 80 % of the distance from
   the entry to where the line leaves the bone anteriorly. A plan is kept only when at least 90 %
   of the samples between entry and tip lie in bone and the tip lies in bone at least as far
   forward as the body's centroid; a vertebra gets both screws or none.

   The direction is a planning choice, not the anatomical pedicle axis: on the procedural phantom
   (whose pedicle axes converge 2-20 degrees from T11 to L5) the isthmus points lie within 1.6 mm
   of the true pedicle axes but the screws converge 18-24 degrees at every level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from sonogym.anatomy.io import spacing_array
from sonogym.anatomy.labels import VERTEBRA_IDS, is_screw_level, vertebra_name
from sonogym.errors import DataError

SPINAL_CORD_ID = 79
"""TotalSegmentator v2 id of the spinal cord (used when the canal ring is open)."""

MIN_CANAL_AREA_M2 = 30e-6
"""Smallest enclosed hole accepted as a spinal canal cross-section [m^2] (radius ~3 mm)."""

SCREW_DEPTH_FRACTION = 0.8
"""Screw length as a fraction of the entry-to-anterior-cortex distance along the trajectory."""

CONVERGENCE_OFFSET = 0.25
"""Lateral offset of the screw target from the body centroid, in body half-widths."""

MIN_INSIDE_FRACTION = 0.9
"""Fraction of samples between entry and tip that must lie in bone for a plan to be kept."""

PEDICLE_DEPTH_FRACTION = 0.6
"""The isthmus is searched in this anterior fraction of the canal's antero-posterior depth."""

_log = logging.getLogger(__name__)
_EXIT_GAP_M = 2e-3  # a line has left the bone after this much consecutive background
_CLOSING_RADII_M = (1e-3, 2e-3, 3e-3, 5e-3)  # gap closing before looking for the canal hole


@dataclass(frozen=True)
class ScrewTrajectory:
    """A planned transpedicular screw, in the patient frame [m]."""

    side: str  # "left" | "right" (patient's side)
    entry_m: np.ndarray  # [3] entry point on the posterior bone surface
    direction: np.ndarray  # [3] unit vector from the entry into the vertebral body
    length_m: float  # planned screw length
    corridor_radius_m: float  # radius of the largest circle inscribed in the pedicle isthmus
    isthmus_m: np.ndarray  # [3] centre of the pedicle isthmus

    @property
    def tip_m(self) -> np.ndarray:
        """Screw tip: ``entry_m + length_m * direction``."""
        return np.asarray(self.entry_m) + float(self.length_m) * np.asarray(self.direction)


@dataclass(frozen=True)
class Vertebra:
    """Landmarks of one vertebra, in the patient frame [m]."""

    label: int  # TotalSegmentator v2 id, e.g. 28
    name: str  # e.g. "L4"
    centroid_m: np.ndarray  # [3]
    axes: np.ndarray  # [3, 3] rotation; columns = unit left, posterior, cranial axes of this vertebra
    canal_center_m: np.ndarray  # [3] centre of the spinal canal at the centroid's height
    canal_radius_m: float  # equivalent radius sqrt(area / pi) of the canal cross-section
    voxel_count: int
    complete: bool  # False when the vertebra touches the volume border
    screws: tuple[ScrewTrajectory, ...]  # (left, right) for complete T1..L5 when planning succeeds, else ()


# --------------------------------------------------------------------------------------------
# public API


def find_vertebrae(labels: np.ndarray, spacing_m, *, min_voxels: int = 200) -> list[Vertebra]:
    """Find the vertebrae of a label volume and compute their landmarks (see the module docstring).

    Args:
        labels: integer label volume ``[X, Y, Z]`` with TotalSegmentator v2 ids, LPS axes.
        spacing_m: voxel size [m], a float (isotropic) or a length-3 sequence (x, y, z).
        min_voxels: labels with fewer voxels than this are ignored as fragments.

    Returns:
        The vertebrae found, most cranial first (C1 .. S1 order); empty if there are none.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise DataError(f"label volume must be 3-D [X, Y, Z], got shape {labels.shape}.")
    if labels.dtype.kind not in "iu":
        raise DataError(f"label volume must hold integer ids, got dtype {labels.dtype}; pass the label map, not the CT.")
    spacing = spacing_array(spacing_m)
    shape = np.array(labels.shape)
    boxes = ndimage.find_objects(labels, max_label=max(VERTEBRA_IDS))

    found = []  # (label, box, mask, offset, voxel indices in the box, centroid, count, complete)
    for lab in VERTEBRA_IDS:
        box = boxes[lab - 1] if lab - 1 < len(boxes) else None
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        mask = labels[box] == lab
        if np.count_nonzero(mask) < min_voxels:
            continue
        mask = _main_parts(mask)
        count = int(np.count_nonzero(mask))
        if count < min_voxels:
            continue
        offset = np.array([s.start for s in box])
        idx = np.argwhere(mask)
        lo, hi = idx.min(0) + offset, idx.max(0) + offset
        complete = bool(np.all(lo > 0) and np.all(hi < shape - 1))
        centroid = (idx.mean(0) + offset) * spacing
        found.append((lab, box, mask, offset, idx, centroid, count, complete))

    if not found:
        return []
    tangents = _spine_tangents([f[5] for f in found], [f[7] for f in found])

    vertebrae = []
    for (lab, box, mask, offset, idx, centroid, count, complete), cranial in zip(found, tangents):
        pts = (idx + offset) * spacing - centroid  # voxel centres relative to the centroid

        def cord_points(box=box, offset=offset, centroid=centroid):
            return (np.argwhere(labels[box] == SPINAL_CORD_ID) + offset) * spacing - centroid

        canal = _find_canal(pts, cranial, spacing, cord_points)
        axes = _vertebra_axes(pts, cranial, canal)
        if canal is None:
            canal_center, canal_radius = centroid.copy(), 0.0
        else:
            canal_center, canal_radius = centroid + canal.center_rel, canal.radius
        screws: tuple[ScrewTrajectory, ...] = ()
        if complete and is_screw_level(lab) and canal is not None and canal.from_hole:
            screws = _plan_screws(mask, offset, spacing, centroid, axes, canal)
        vertebrae.append(Vertebra(
            label=int(lab), name=vertebra_name(lab), centroid_m=centroid, axes=axes,
            canal_center_m=canal_center, canal_radius_m=float(canal_radius), voxel_count=count,
            complete=complete, screws=screws,
        ))
    return vertebrae


def convergence_deg(vertebra: Vertebra, screw: ScrewTrajectory) -> float:
    """Medial convergence of a screw in the vertebra's axial plane [deg] (positive = toward the midline)."""
    d = vertebra.axes.T @ np.asarray(screw.direction)  # (left, posterior, cranial)
    side = 1.0 if screw.side == "left" else -1.0
    return float(np.degrees(np.arctan2(-side * d[0], -d[1])))


# --------------------------------------------------------------------------------------------
# helpers: input, components, spine curve


def _main_parts(mask: np.ndarray) -> np.ndarray:
    """Keep the 26-connected components of at least 10 % of the largest one."""
    comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(comp.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    return np.isin(comp, keep)


def _spine_tangents(centroids: list[np.ndarray], complete: list[bool]) -> list[np.ndarray]:
    """Unit cranial tangent of the centroid curve at each vertebra (input in cranio-caudal order)."""
    n = len(centroids)
    use = [i for i in range(n) if complete[i]]
    if len(use) < 2:
        use = list(range(n))
    if len(use) < 2:
        return [np.array([0.0, 0.0, 1.0])] * n
    pts = np.array([centroids[i] for i in use])
    curve_t = []
    for k in range(len(use)):
        up = pts[max(k - 1, 0)]  # more cranial
        down = pts[min(k + 1, len(use) - 1)]
        t = up - down
        norm = np.linalg.norm(t)
        t = t / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
        curve_t.append(t if t[2] >= 0 else -t)
    out = []
    for i in range(n):
        k = int(np.argmin([abs(i - j) for j in use]))
        out.append(curve_t[k])
    return out


def _in_plane_basis(cranial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``cranial``: u ~ +x (left) and w = cranial x u ~ +y (posterior)."""
    u = np.array([1.0, 0.0, 0.0]) - cranial[0] * cranial
    if np.linalg.norm(u) < 1e-6:
        u = np.array([0.0, -1.0, 0.0]) - (-cranial[1]) * cranial
    u /= np.linalg.norm(u)
    w = np.cross(cranial, u)
    return u, w / np.linalg.norm(w)


# --------------------------------------------------------------------------------------------
# spinal canal and axes


@dataclass
class _Canal:
    center_rel: np.ndarray  # [3] canal centre minus vertebra centroid (orthogonal to the cranial axis)
    radius: float
    pixels_rel: np.ndarray  # [M, 3] canal pixel centres relative to the centroid (in the axial plane)
    from_hole: bool  # False when estimated from the spinal cord


def _disk(radius_px: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px**2 + 0.5


def _find_canal(pts: np.ndarray, cranial: np.ndarray, spacing: np.ndarray, cord_points) -> _Canal | None:
    """Largest enclosed hole of the vertebra projected along ``cranial``; the spinal cord if the ring is open."""
    u, w = _in_plane_basis(cranial)
    h = float(spacing.min())
    radii_px = sorted({max(int(round(r / h)), 1) for r in _CLOSING_RADII_M})
    uv = np.stack([pts @ u, pts @ w], axis=1)
    pad = max(radii_px) + 3
    lo = uv.min(0) - pad * h
    ij = np.round((uv - lo) / h).astype(np.int64)
    occ = np.zeros(tuple(ij.max(0) + pad + 1), dtype=bool)
    occ[ij[:, 0], ij[:, 1]] = True
    for radius in radii_px:
        closed = ndimage.binary_closing(occ, structure=_disk(radius))
        holes = ndimage.binary_fill_holes(closed) & ~closed
        comp, n = ndimage.label(holes)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        best = int(np.argmax(sizes)) + 1
        area = sizes[best - 1] * h * h
        if area < MIN_CANAL_AREA_M2:
            continue
        pix = np.argwhere(comp == best) * h + lo  # (u, w) of canal pixels
        pix3 = pix[:, :1] * u + pix[:, 1:] * w
        return _Canal(center_rel=pix3.mean(0), radius=float(np.sqrt(area / np.pi)), pixels_rel=pix3,
                      from_hole=True)
    cord = cord_points()  # spinal cord voxel centres relative to the centroid, [K, 3]
    if len(cord) > 0:
        height = pts @ cranial
        hc = cord @ cranial
        sel = cord[(hc >= height.min()) & (hc <= height.max())]
        if len(sel) > 0:
            flat = sel - np.outer(sel @ cranial, cranial)
            extent = hc[(hc >= height.min()) & (hc <= height.max())]
            span = max(float(np.ptp(extent)), float(spacing.max()))
            area = len(sel) * float(np.prod(spacing)) / span
            return _Canal(center_rel=flat.mean(0), radius=float(np.sqrt(area / np.pi)), pixels_rel=flat,
                          from_hole=False)
    return None


def _vertebra_axes(pts: np.ndarray, cranial: np.ndarray, canal: _Canal | None) -> np.ndarray:
    """[left, posterior, cranial] columns; posterior = from the body (bone anterior to the canal) to the canal."""
    _, w = _in_plane_basis(cranial)
    posterior = w
    if canal is not None:
        flat = pts - np.outer(pts @ cranial, cranial)
        for _ in range(2):  # body "anterior to the canal" depends on the posterior axis: iterate once
            front = float((canal.pixels_rel @ posterior).min())
            body = flat[flat @ posterior < front]
            if len(body) < 10:
                break
            p = canal.center_rel - body.mean(0)
            p = p - (p @ cranial) * cranial
            norm = np.linalg.norm(p)
            if norm < 1e-3 or (p / norm) @ w < np.cos(np.radians(60.0)):
                break
            posterior = p / norm
    left = np.cross(posterior, cranial)
    left /= np.linalg.norm(left)
    posterior = np.cross(cranial, left)
    return np.column_stack([left, posterior, cranial])


# --------------------------------------------------------------------------------------------
# pedicle screws


def _plan_screws(mask, offset, spacing, centroid, axes, canal: _Canal) -> tuple[ScrewTrajectory, ...]:
    """Left and right pedicle screw trajectories, or () when planning fails."""
    local = _LocalGrid(mask, offset, spacing, centroid, axes)
    ab = canal.pixels_rel @ axes[:, :2]  # canal pixels in (a, b)
    b_lo, b_hi = float(ab[:, 1].min()), float(ab[:, 1].max())
    a0 = float(canal.center_rel @ axes[:, 0])  # ~0 by construction
    body = _body(local, b_lo)
    if body is None:
        _log.debug("no screws: no vertebral body anterior to the canal")
        return ()
    screws = []
    for side, sign in (("left", 1.0), ("right", -1.0)):
        screw = _plan_side(local, side, sign, a0, ab[:, 0], b_lo, b_hi, *body)
        if isinstance(screw, str):
            _log.debug("no screws: %s side: %s", side, screw)
            return ()
        screws.append(screw)
    return tuple(screws)


class _LocalGrid:
    """The vertebra mask resampled onto a grid aligned with its axes (a, b, c) = (left, posterior, cranial)."""

    def __init__(self, mask, offset, spacing, centroid, axes):
        self.h = h = float(min(spacing.min(), 1e-3))
        self.centroid, self.axes = centroid, axes
        idx = np.argwhere(mask)
        q = ((idx + offset) * spacing - centroid) @ axes
        lo = q.min(0) - 3 * h
        hi = q.max(0) + 3 * h
        n = np.ceil((hi - lo) / h).astype(int) + 1
        self.origin = lo
        ga, gb, gc = (lo[i] + h * np.arange(n[i]) for i in range(3))
        # world position of every local grid point -> continuous voxel index in the crop
        world = (centroid - offset * spacing)[:, None, None, None] + (
            axes[:, 0, None, None, None] * ga[None, :, None, None]
            + axes[:, 1, None, None, None] * gb[None, None, :, None]
            + axes[:, 2, None, None, None] * gc[None, None, None, :]
        )
        coords = world / spacing[:, None, None, None]
        self._field = mask.astype(np.float32)
        self._offset_m, self._spacing = offset * spacing, spacing
        self.mask = ndimage.map_coordinates(self._field, coords, order=1, cval=0.0) >= 0.5
        self.ga, self.gb, self.gc = ga, gb, gc

    def sample(self, q: np.ndarray) -> np.ndarray:
        """Trilinear mask value (0..1) at local points q [..., 3]."""
        world = self.centroid + q @ self.axes.T
        k = (world - self._offset_m) / self._spacing
        flat = k.reshape(-1, 3).T
        return ndimage.map_coordinates(self._field, flat, order=1, cval=0.0).reshape(q.shape[:-1])

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Nearest-grid-point membership for local points q [N, 3]."""
        k = np.round((q - self.origin) / self.h).astype(int)
        ok = np.all((k >= 0) & (k < np.array(self.mask.shape)), axis=1)
        out = np.zeros(len(q), dtype=bool)
        out[ok] = self.mask[k[ok, 0], k[ok, 1], k[ok, 2]]
        return out

    def to_world(self, q: np.ndarray) -> np.ndarray:
        return self.centroid + self.axes @ q


def _body(local: _LocalGrid, b_lo: float):
    """Centroid (local) and half-width of the vertebral body: largest bone component anterior to the canal."""
    front = local.mask & (local.gb < b_lo - local.h)[None, :, None]
    comp, n = ndimage.label(front)
    if n == 0:
        return None
    sizes = np.bincount(comp.ravel())[1:]
    k = np.argwhere(comp == int(np.argmax(sizes)) + 1)
    q = local.origin + k * local.h
    centre = q.mean(0)
    half_depth = 0.5 * float(np.percentile(q[:, 1], 98) - np.percentile(q[:, 1], 2))
    # width at mid-depth: away from the posterior margin, where transverse processes may join (L5)
    mid = q[np.abs(q[:, 1] - centre[1]) <= 0.25 * half_depth + local.h]
    half_width = 0.5 * float(np.percentile(mid[:, 0], 98) - np.percentile(mid[:, 0], 2))
    return centre, half_width, half_depth


def _march(local: _LocalGrid, start: np.ndarray, direction: np.ndarray, max_len: float = 0.15) -> float:
    """Distance along ``direction`` from ``start`` to the last bone sample before a gap of _EXIT_GAP_M."""
    step = local.h / 2
    s = np.arange(0.0, max_len, step)
    inside = local.inside(start[None, :] + s[:, None] * direction[None, :])
    gap = max(int(np.ceil(_EXIT_GAP_M / step)), 1)
    last_in = 0.0
    run = 0
    for k, flag in enumerate(inside):
        if flag:
            last_in, run = s[k], 0
        else:
            run += 1
            if run >= gap:
                break
    return float(last_in)


def _plan_side(local: _LocalGrid, side, sign, a0, canal_a, b_lo, b_hi, body_centroid, half_width, half_depth):
    """One screw, or a string saying why planning failed."""
    h = local.h
    # the pedicle lies between the midline and the lateral border of the body, in the anterior part
    # of the canal's depth; farther out are the transverse processes, farther back the pars
    # interarticularis and the laminae
    lateral = sign * (local.ga - a0)
    a_side = (lateral > 0) & (lateral <= half_width)
    planes = np.flatnonzero((local.gb >= b_lo) & (local.gb <= b_lo + PEDICLE_DEPTH_FRACTION * (b_hi - b_lo)))
    canal_half_width = float(np.max(sign * (canal_a - a0)))  # canal's extent toward this side
    areas, sections = [], []
    for j in planes:
        comp, n = ndimage.label(local.mask[:, j, :] & a_side[:, None])
        if n == 0:
            break
        # the pedicle: the largest section whose centre lies lateral to the canal (small lips of
        # the body's posterior rim and bone fragments are skipped)
        idx = np.arange(1, n + 1)
        count = ndimage.sum_labels(np.ones_like(comp), comp, idx)
        centre_a = ndimage.sum_labels(np.broadcast_to(local.ga[:, None], comp.shape), comp, idx) / count
        ok = (sign * (centre_a - a0) >= canal_half_width) & (count >= 3)
        if not ok.any():
            break
        pick = idx[ok][np.argmax(count[ok])]
        section = comp == pick
        areas.append(float(count[pick - 1]) * h * h)
        sections.append(section)
    if not areas:
        return "no bone lateral to the canal"
    planes = planes[: len(areas)]
    areas = np.array(areas)
    smooth = areas.copy()
    if len(areas) >= 3:
        smooth[1:-1] = np.convolve(areas, np.ones(3) / 3, mode="valid")
    # candidates from the narrowest section up: the first one giving a valid trajectory wins (a
    # narrow pars interarticularis behind a short, wide pedicle (L5) fails the checks and is skipped)
    reason = "no candidate section"
    for best in np.argsort(smooth, kind="stable"):
        neighbours = [sections[k] for k in (best - 1, best + 1) if 0 <= k < len(sections)]
        if neighbours and not any(np.any(sections[best] & other) for other in neighbours):
            continue  # not part of a continuous bridge
        plan = _trajectory(local, side, sign, sections[best], local.gb[planes[best]], a0, b_lo, body_centroid,
                           half_width, half_depth)
        if isinstance(plan, ScrewTrajectory):
            return plan
        if best == int(np.argmin(smooth)):
            reason = plan
    return reason


def _isthmus_centre_and_radius(local: _LocalGrid, section: np.ndarray, b: float, window) -> tuple[np.ndarray, float]:
    """Centre (local coordinates) and inscribed-circle radius of the isthmus section.

    The section is re-sampled at a quarter of the grid spacing from the original voxels
    (trilinear, threshold 0.5; ``window(a)`` says which lateral positions belong to the search
    window) so that the radius is not quantised to the grid.
    """
    fine = 4
    f = local.h / fine
    pix = np.argwhere(section)
    lo, hi = pix.min(0) - 2, pix.max(0) + 2
    a = local.ga[0] + local.h * np.arange(lo[0] * fine, hi[0] * fine + 1) / fine
    c = local.gc[0] + local.h * np.arange(lo[1] * fine, hi[1] * fine + 1) / fine
    q = np.stack(np.broadcast_arrays(a[:, None], np.float64(b), c[None, :]), axis=-1)
    mask = (local.sample(q) >= 0.5) & window(a)[:, None]
    comp, n = ndimage.label(mask)
    if n > 0:  # the fine component overlapping the coarse section most
        ka = np.clip(np.round((a - local.ga[0]) / local.h).astype(int), 0, section.shape[0] - 1)
        kc = np.clip(np.round((c - local.gc[0]) / local.h).astype(int), 0, section.shape[1] - 1)
        coarse = section[ka[:, None], kc[None, :]]
        overlap = np.bincount(comp[coarse], minlength=n + 1)
        overlap[0] = 0
        if overlap.max() > 0:
            mask = comp == int(np.argmax(overlap))
        else:
            n = 0
    if n == 0:  # degenerate: fall back to the coarse section
        a, c, mask, f = local.ga, local.gc, section, local.h
    edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    radius = max((float(edt.max()) - 0.5) * f, 0.5 * f)
    pts = np.argwhere(mask)
    centre = pts.mean(0)
    k = np.round(centre).astype(int)
    if not mask[k[0], k[1]]:  # non-convex section: use the point deepest inside it
        centre = np.array(np.unravel_index(int(np.argmax(edt)), edt.shape), dtype=float)
    step_a, step_c = a[1] - a[0], c[1] - c[0]
    return np.array([a[0] + centre[0] * step_a, b, c[0] + centre[1] * step_c]), radius


def _trajectory(local: _LocalGrid, side, sign, section, b, a0, b_lo, body_centroid, half_width, half_depth):
    """Screw through the isthmus ``section`` (an (a, c) mask in plane ``b``), or why it fails."""
    h = local.h
    isthmus, radius = _isthmus_centre_and_radius(local, section, b, lambda a: (sign * (a - a0) > 0)
                                                 & (sign * (a - a0) <= half_width))

    # target: in the body, a quarter half-width toward this side, half-way from its centre to the front
    target = body_centroid + np.array([sign * CONVERGENCE_OFFSET * half_width, -0.5 * half_depth, 0.0])
    d = target - isthmus
    if d[1] >= 0 or np.linalg.norm(d) < 1e-6:
        return "body target not anterior to the isthmus"
    d /= np.linalg.norm(d)
    back = _march(local, isthmus, -d)
    entry = isthmus - back * d
    reach = _march(local, entry, d)
    if reach <= back:
        return "line leaves the bone at the isthmus"
    length = SCREW_DEPTH_FRACTION * reach
    tip = entry + length * d
    s = np.linspace(0.0, length, max(int(length / (h / 2)), 2))
    inside = local.inside(entry[None, :] + s[:, None] * d[None, :]).mean()
    if inside < MIN_INSIDE_FRACTION:
        return f"only {inside:.0%} of the trajectory in bone"
    if tip[1] >= min(b_lo, body_centroid[1]) or not local.inside(tip[None, :])[0]:
        return "tip not in the anterior half of the body"
    return ScrewTrajectory(
        side=side,
        entry_m=local.to_world(entry),
        direction=local.axes @ d,
        length_m=float(length),
        corridor_radius_m=float(radius),
        isthmus_m=local.to_world(isthmus),
    )


# --------------------------------------------------------------------------------------------
# figure


def plot_landmarks(labels, spacing_m, vertebrae, path, *, hu=None) -> None:
    """Save a PNG of the spine landmarks.

    Top: sagittal (x-projection, anterior on the left) and coronal (y-projection, patient's right
    on the left) views of the vertebra labels with centroids, canal centres, cranial/posterior
    axes, screws (entry -> tip) and names. Bottom: one axial view per vertebra in its own frame
    (patient's right on the left, anterior up), through the plane of its screws when it has
    any, else through the centroid: vertebra mask, canal circle, centroid, pedicle isthmi with
    their corridor circles and the screws. With ``hu`` the CT is drawn underneath.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.gridspec import GridSpec

    labels = np.asarray(labels)
    spacing = spacing_array(spacing_m)
    vert_ids = np.array(VERTEBRA_IDS)
    is_vert = np.isin(labels, vert_ids)
    vlab = np.where(is_vert, labels, 0).astype(np.uint8)
    palette = plt.get_cmap("tab20")
    colors = np.zeros((256, 4))
    for k, lab in enumerate(VERTEBRA_IDS):
        colors[lab] = palette(k % 20)
    cmap = ListedColormap(colors)
    screw_color = {"left": "tab:cyan", "right": "magenta"}

    n_axial = len(vertebrae)
    ncols = max(min(n_axial, 6), 4)
    nrows = int(np.ceil(n_axial / ncols)) if n_axial else 0
    fig = plt.figure(figsize=(3.2 * ncols, 8.5 + 3.4 * nrows))
    gs = GridSpec(1 + nrows, ncols, figure=fig, height_ratios=[8.5] + [3.4] * nrows)
    ax_sag = fig.add_subplot(gs[0, : ncols // 2])
    ax_cor = fig.add_subplot(gs[0, ncols // 2 :])

    if is_vert.any():
        box = ndimage.find_objects(is_vert.astype(np.uint8))[0]
        pad = [int(np.ceil(0.03 / s)) for s in spacing]
        box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, labels.shape))
    else:
        box = tuple(slice(0, n) for n in labels.shape)
    lo_mm = np.array([b.start for b in box]) * spacing * 1e3
    hi_mm = np.array([b.stop - 1 for b in box]) * spacing * 1e3

    for ax, proj_axis, (h_ax, v_ax), title in (
        (ax_sag, 0, (1, 2), "sagittal (projection along x; anterior left)"),
        (ax_cor, 1, (0, 2), "coronal (projection along y; patient's right left)"),
    ):
        extent = (lo_mm[h_ax] - spacing[h_ax] * 500, hi_mm[h_ax] + spacing[h_ax] * 500,
                  lo_mm[v_ax] - spacing[v_ax] * 500, hi_mm[v_ax] + spacing[v_ax] * 500)
        if hu is not None:
            sub = np.clip(np.asarray(hu)[box].astype(np.float32), -200, 1500)
            ax.imshow(sub.mean(axis=proj_axis).T, cmap="gray", origin="lower", extent=extent, aspect="equal")
        proj = vlab[box].max(axis=proj_axis).T
        ax.imshow(np.ma.masked_equal(proj, 0), cmap=cmap, vmin=0, vmax=255, origin="lower", extent=extent,
                  alpha=0.55 if hu is not None else 0.9, interpolation="nearest", aspect="equal")
        for v in vertebrae:
            c = v.centroid_m * 1e3
            ax.plot(c[h_ax], c[v_ax], "o", ms=4, color="k" if v.complete else "0.5", mec="w", mew=0.6)
            cc = v.canal_center_m * 1e3
            ax.plot(cc[h_ax], cc[v_ax], "x", ms=4, color="yellow")
            for col, color in ((2, "tab:blue"), (1, "tab:green") if proj_axis == 0 else (0, "tab:red")):
                tip = c + 15.0 * v.axes[:, col]
                ax.plot([c[h_ax], tip[h_ax]], [c[v_ax], tip[v_ax]], color=color, lw=1.2)
            for s in v.screws:
                e, t = s.entry_m * 1e3, s.tip_m * 1e3
                ax.plot([e[h_ax], t[h_ax]], [e[v_ax], t[v_ax]], color=screw_color[s.side], lw=1.6)
                ax.plot(e[h_ax], e[v_ax], ".", color=screw_color[s.side], ms=4)
            label_pos = c.copy()
            label_pos[h_ax] = max(label_pos[h_ax] - 32.0, extent[0] + 1.0)  # anterior (sagittal) / right (coronal)
            name = v.name + ("" if v.complete else " (cut)")
            ax.text(label_pos[h_ax], label_pos[v_ax], name, fontsize=8, ha="left", va="center",
                    color="k", bbox=dict(boxstyle="round,pad=0.15", fc="w", ec="none", alpha=0.75))
        ax.set_title(title, fontsize=10)
        if hu is None:
            ax.set_facecolor("0.3")  # yellow and cyan marks stay visible
        ax.set_xlabel(("x (left) [mm]", "y (posterior) [mm]")[h_ax == 1])
        ax.set_ylabel("z (superior) [mm]")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])

    for k, v in enumerate(vertebrae):
        ax = fig.add_subplot(gs[1 + k // ncols, k % ncols])
        _plot_axial(ax, labels, spacing, v, hu, screw_color)

    fig.suptitle(
        f"Spine landmarks: {len(vertebrae)} vertebrae, {sum(len(v.screws) for v in vertebrae)} screws "
        "(axes: blue cranial, green posterior, red left; yellow x canal centre; screws cyan left, magenta right)",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.04, top=0.95, wspace=0.3, hspace=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_axial(ax, labels, spacing, v: Vertebra, hu, screw_color) -> None:
    """One vertebra in its own axial frame (through the screws' plane when it has screws)."""
    left, posterior, cranial = v.axes.T
    centre = v.centroid_m.copy()
    if v.screws:
        centre = centre + cranial * float(np.mean([(s.isthmus_m - v.centroid_m) @ cranial for s in v.screws]))
        d = np.mean([s.direction for s in v.screws], axis=0)
        d = d - (d @ left) * left  # screws' mean direction in the sagittal plane (points anteriorly)
        vertical = -d / np.linalg.norm(d)  # image "down" = posterior along the screws
    else:
        vertical = posterior
    res = 0.5e-3
    ha = np.arange(-50e-3, 50e-3 + res / 2, res)
    hb = np.arange(-50e-3, 60e-3 + res / 2, res)
    pts = centre[:, None, None] + left[:, None, None] * ha[None, :, None] + vertical[:, None, None] * hb[None, None, :]
    coords = pts / spacing[:, None, None]
    lab = ndimage.map_coordinates(labels, coords, order=0, cval=0)
    extent = (ha[0] * 1e3, ha[-1] * 1e3, hb[-1] * 1e3, hb[0] * 1e3)
    if hu is not None:
        img = ndimage.map_coordinates(np.asarray(hu, dtype=np.float32), coords, order=1, cval=-1000.0)
        ax.imshow(np.clip(img, -200, 1200).T, cmap="gray", extent=extent, origin="upper")
    own = (lab == v.label).T
    ax.imshow(np.ma.masked_where(~own, own.astype(float)), cmap=_overlay_cmap(), vmin=0, vmax=1, extent=extent,
              origin="upper", alpha=0.35 if hu is not None else 0.8)
    if own.any():
        ax.contour(ha * 1e3, hb * 1e3, own.astype(float), levels=[0.5], colors="orange", linewidths=0.8)

    def to2d(p):
        r = p - centre
        return 1e3 * (r @ left), 1e3 * (r @ vertical)

    cx, cy = to2d(v.centroid_m)
    ax.plot(cx, cy, "o", color="k", mec="w", ms=4)
    kx, ky = to2d(v.canal_center_m)
    ax.plot(kx, ky, "x", color="yellow", ms=5)
    ax.add_patch(_circle((kx, ky), v.canal_radius_m * 1e3, "yellow"))
    title = v.name + ("" if v.complete else " (cut)")
    for s in v.screws:
        ex, ey = to2d(s.entry_m)
        tx, ty = to2d(s.tip_m)
        ix, iy = to2d(s.isthmus_m)
        color = screw_color[s.side]
        ax.plot([ex, tx], [ey, ty], color=color, lw=1.8)
        ax.plot(ex, ey, "o", color=color, ms=3)
        ax.add_patch(_circle((ix, iy), s.corridor_radius_m * 1e3, color))
    if v.screws:
        title += "  " + " ".join(
            f"{s.side[0].upper()}:{s.length_m * 1e3:.0f}mm/{convergence_deg(v, s):.0f}\N{DEGREE SIGN}" for s in v.screws
        )
    ax.set_title(title, fontsize=8)
    if hu is None:
        ax.set_facecolor("0.3")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.tick_params(labelsize=6)


def _overlay_cmap():
    from matplotlib.colors import ListedColormap

    return ListedColormap([(0, 0, 0, 0), (1.0, 0.6, 0.1, 1.0)])


def _circle(xy, r, color):
    from matplotlib.patches import Circle

    return Circle(xy, r, fill=False, color=color, lw=1.0)


__all__ = ["ScrewTrajectory", "Vertebra", "convergence_deg", "find_vertebrae", "plot_landmarks"]
