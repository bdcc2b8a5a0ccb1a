"""Seeded procedural torso phantom with a lower thoracic and lumbar spine (T11-L5).

:func:`phantom_arrays` returns a CT-like volume and its TotalSegmentator v2 label map, built
analytically from a seed; :func:`phantom_geometry` returns the ground-truth geometry it is built
from (vertebra frames, pedicle axes, the drawn parameters).

Frame and units
---------------
Arrays are indexed ``[x, y, z]`` in the LPS patient frame: axis 0 (x) points to the patient's
left, axis 1 (y) posterior (the back is at high y), axis 2 (z) superior (head at high z). Voxel
``(i, j, k)`` has its centre at ``(i, j, k) * spacing_m`` metres. CT values are Hounsfield units
(int16), labels TotalSegmentator v2 ids (uint8, see :mod:`sonogym.anatomy.labels`); label 0 is
air outside the body *and* unlabelled tissue (skin, fat, body-wall muscle, discs, CSF, ligaments,
abdominal soft tissue), told apart by the HU value exactly as in a real TotalSegmentator output.
Internally all lengths are millimetres; the public geometry is in metres.

Content
-------
* **Torso**: a prism of constant cross-section along z in air (-1000 HU). The cross-section is a
  super-ellipse, rounder in front and flatter at the back, with a shallow midline furrow over the
  spinous processes. From the outside in: skin (2 mm, at least one voxel), subcutaneous fat (its
  thickness at the back is drawn from the seed, 8-35 mm; 1.5x that over the belly), a body-wall
  muscle layer (12 mm in front, 30 mm at the back), then unlabelled abdominal soft tissue.
* **Spine**: T11, T12, L1-L5 and the top of the sacrum, placed along a smooth lordotic curve in the
  y-z plane (most anterior between L3 and L4); each vertebra is tilted with the curve's tangent.
  A vertebra is a union of signed-distance primitives: an elliptic body with a flat posterior
  wall and a slight waist, two pedicles (elliptic rods converging medially toward the front), a
  posterior arch (laminae) that closes a bony ring around the spinal canal at pedicle height, a
  spinous process pointing posteriorly and caudally, two transverse processes and four articular
  processes (facet joints left open by ~1-2 mm). Bone is a cortical shell (1300 HU, 1.5 mm or at
  least one voxel) around cancellous bone (about 260 HU, drawn per vertebra). Intervertebral
  discs (80 HU, label 0) fill the wedge-shaped gaps. The canal holds epidural fat, a dural sac of
  CSF (10 HU, label 0) and the spinal cord (label 79) along its whole length.
* **Muscles and organs**: paraspinal muscles (autochthon left/right) from the transverse-process
  plane back to the fat, split by a midline ligament; psoas (iliopsoas) beside the lumbar bodies,
  growing caudally; kidneys in perirenal fat; liver on the patient's right (low x); spleen on
  the left; aorta left of the midline in front of the spine, dividing into the common iliac
  arteries at L4; inferior vena cava on the right, formed from the iliac veins at L5.

Variation drawn from ``np.random.default_rng(seed)``: overall spine size, lordosis amplitude,
fat thickness, torso width and depth, furrow depth, per-vertebra jitter (dimensions, pedicle
width and angle, axial rotation, bone density) and kidney positions. The same seed gives
bit-identical arrays at a given spacing; the geometry does not depend on the spacing.

Extent: the default phantom spans 400 x 280 x 280 mm (T11 to the top of the sacrum with the
torso and 2-4 cm of air around it in x and y). ``small=True`` keeps the full cross-section but
only the z range of L2-L4 plus margins (about 13 cm) and builds only those three vertebrae.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np

from sonogym.anatomy.labels import LABEL_IDS, vertebra_name

TISSUE_HU: dict[str, int] = {
    "air": -1000, "skin": 40, "fat": -100, "muscle": 45, "abdomen": 30, "ligament": 60,
    "disc": 80, "epidural_fat": -80, "csf": 10, "spinal_cord": 35, "perirenal_fat": -90,
    "kidney": 32, "liver": 58, "spleen": 48, "blood": 42, "cortical_bone": 1300,
    "cancellous_bone": 260,
}
"""CT value of each tissue of the phantom [HU] (cancellous bone varies by +-35 HU per vertebra)."""

EXTENT_MM = np.array([400.0, 280.0, 280.0])
"""Physical size of the default phantom along x, y, z [mm]."""

SKIN_MM = 2.0
CORTEX_MM = 1.5
_AIR_BEHIND_MM = 25.0   # air between the back and the volume's high-y face
_TOP_MARGIN_MM = 14.0   # from the top of the volume to T11's upper endplate (along the curve)
_SMALL_MARGIN_MM = 8.0  # soft tissue kept beyond L2's and L4's bone in the small crop
_LORDOSIS_HALF_SPAN_MM = 120.0


# --------------------------------------------------------------------------------------------
# level table


@dataclass(frozen=True)
class _Level:
    """Nominal dimensions of one vertebra at size factor 1 [mm, deg]."""

    name: str
    body_w: float  # left-right width of the body
    body_d: float  # antero-posterior depth of the body
    body_h: float  # cranio-caudal height of the body
    disc_below: float  # height of the disc under it
    canal_w: float
    canal_d: float
    ped_w: float  # pedicle width (transverse)
    ped_h: float  # pedicle height (cranio-caudal)
    ped_angle: float  # medial convergence of the pedicle axis toward the front [deg]
    tp_reach: float  # tip of the transverse process, distance from the midline
    sp_len: float  # spinous process length behind the arch
    sp_h: float  # spinous process height
    sp_tilt: float  # caudal tilt of the spinous process [deg]


_LEVELS: tuple[_Level, ...] = (
    _Level("T11", 38, 29, 23, 6, 16.0, 15.0, 7.5, 16.0, 2, 30, 26, 12, 35),
    _Level("T12", 40, 30, 24, 7, 17.0, 15.0, 8.0, 15.5, 5, 26, 28, 14, 25),
    _Level("L1", 42, 31, 25, 8, 18.0, 15.0, 8.5, 15.0, 8, 36, 30, 16, 15),
    _Level("L2", 44, 32, 26, 9, 18.0, 15.0, 9.0, 15.0, 10, 40, 31, 17, 12),
    _Level("L3", 46, 33, 27, 10, 18.5, 14.5, 10.0, 14.5, 12, 44, 31, 17, 10),
    _Level("L4", 48, 33, 27, 10, 19.0, 14.0, 11.0, 14.0, 15, 42, 30, 16, 10),
    _Level("L5", 50, 33, 26, 9, 20.0, 14.0, 12.0, 13.0, 20, 42, 27, 14, 8),
)
_SACRUM = _Level("S", 50, 34, 60, 0, 22.0, 12.0, 0, 0, 0, 52, 12, 10, 0)
_DISC_ABOVE_T11_MM = 5.0
_SMALL_LEVELS = ("L2", "L3", "L4")
_SACRAL_EXTRA_TILT_DEG = 15.0
_CANAL_NOTCH_MM = 1.5


# --------------------------------------------------------------------------------------------
# public geometry


@dataclass(frozen=True)
class PedicleGeometry:
    """One pedicle, modelled as an elliptic rod, in the phantom frame [m].

    Attributes:
        posterior_m: centre of the rod's posterior end (at the lamina junction), shape (3,).
        anterior_m: centre of the rod's anterior end (inside the vertebral body), shape (3,).
        isthmus_m: centre of the rod where it passes the spinal canal, shape (3,).
        axis: unit vector from the posterior to the anterior end, shape (3,).
        width_m: transverse (medio-lateral) diameter of the rod.
        height_m: cranio-caudal diameter of the rod.
    """

    posterior_m: np.ndarray
    anterior_m: np.ndarray
    isthmus_m: np.ndarray
    axis: np.ndarray
    width_m: float
    height_m: float


@dataclass(frozen=True)
class VertebraGeometry:
    """Ground truth of one vertebra in the phantom frame [m].

    Attributes:
        label: TotalSegmentator v2 id (e.g. 28 for L4; 25 = sacrum).
        name: short name, e.g. ``"L4"`` or ``"sacrum"``.
        center_m: centre of the vertebral body, shape (3,).
        axes: rotation, shape (3, 3); columns = unit left, posterior and cranial axes of the vertebra.
        body_width_m, body_depth_m, body_height_m: body diameters along those axes.
        canal_width_m, canal_depth_m: spinal canal width and antero-posterior depth.
        canal_center_m: centre of the spinal canal at the body's mid-height, shape (3,).
        pedicles: ``{"left": ..., "right": ...}`` (empty for the sacrum).
    """

    label: int
    name: str
    center_m: np.ndarray
    axes: np.ndarray
    body_width_m: float
    body_depth_m: float
    body_height_m: float
    canal_width_m: float
    canal_depth_m: float
    canal_center_m: np.ndarray
    pedicles: dict[str, PedicleGeometry]


@dataclass(frozen=True)
class PhantomGeometry:
    """Parameters drawn from the seed and the resulting layout, in the phantom frame [m].

    Attributes:
        seed: the seed.
        small: whether this is the L2-L4 crop.
        extent_m: physical size of the volume along x, y, z, shape (3,); the voxel grid of spacing
            ``s`` has ``round(extent / s)`` voxels per axis.
        size_factor: scale of the spine dimensions (1 = the nominal adult table).
        lordosis_m: forward displacement of the apex relative to points 120 mm above and below it.
        fat_thickness_m: subcutaneous fat thickness at the back.
        torso_width_m, torso_depth_m: left-right and antero-posterior size of the torso.
        midline_x_m: x of the mid-sagittal plane.
        back_y_m: y of the skin of the back beside the midline furrow.
        vertebrae: most cranial first.
    """

    seed: int
    small: bool
    extent_m: np.ndarray
    size_factor: float
    lordosis_m: float
    fat_thickness_m: float
    torso_width_m: float
    torso_depth_m: float
    midline_x_m: float
    back_y_m: float
    vertebrae: tuple[VertebraGeometry, ...]

    def vertebra(self, name: str) -> VertebraGeometry:
        """The vertebra called ``name`` (e.g. ``"L3"``)."""
        for v in self.vertebrae:
            if v.name == name:
                return v
        raise KeyError(f"no vertebra {name!r} in this phantom; it has {[v.name for v in self.vertebrae]}")


def phantom_geometry(seed: int, *, small: bool = False) -> PhantomGeometry:
    """Ground-truth geometry of ``phantom_arrays(seed, small=small)`` (independent of the spacing)."""
    layout = _layout(_draw_params(seed), small)
    m = 1e-3
    vertebrae = tuple(_vertebra_geometry(v) for v in layout.vertebrae)
    p = layout.params
    return PhantomGeometry(
        seed=int(seed), small=bool(small), extent_m=layout.extent * m, size_factor=float(p.size),
        lordosis_m=float(p.lordosis * m), fat_thickness_m=float(p.fat * m), torso_width_m=float(p.width * m),
        torso_depth_m=float(p.depth * m), midline_x_m=float(layout.torso.cx * m),
        back_y_m=float(layout.torso.y_back * m),
        vertebrae=vertebrae,
    )


def phantom_arrays(seed: int, *, spacing_m: float = 1e-3, small: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Build the phantom for ``seed`` on an isotropic grid.

    Args:
        seed: any non-negative integer; the same seed gives bit-identical arrays.
        spacing_m: voxel size [m].
        small: only the L2-L4 segment (full torso cross-section, about 13 cm in z) for fast tests.

    Returns:
        ``(hu, labels)``: ``hu`` int16 [X, Y, Z] Hounsfield units and ``labels`` uint8 [X, Y, Z]
        TotalSegmentator v2 ids, axis 0 = left, 1 = posterior, 2 = superior, voxel ``(i, j, k)``
        centred at ``(i, j, k) * spacing_m``. Default size at 1 mm: 400 x 280 x 280 voxels.
    """
    if not spacing_m > 0:
        raise ValueError(f"spacing_m must be positive, got {spacing_m}")
    layout = _layout(_draw_params(seed), small)
    grid = _Grid(layout.extent, spacing_m * 1e3)
    vol = _Volume(grid)
    _paint_torso(vol, layout)
    _paint_organs(vol, layout)
    _paint_spine(vol, layout)
    return vol.hu, vol.labels


# --------------------------------------------------------------------------------------------
# parameters drawn from the seed


@dataclass(frozen=True)
class _Params:
    size: float  # spine scale factor
    lordosis: float  # [mm]
    fat: float  # back fat [mm]
    width: float  # torso left-right [mm]
    depth: float  # torso antero-posterior [mm]
    furrow: float  # depth of the midline furrow of the back [mm]
    # [8, 6] uniform in [-1, 1], one row per level (T11..L5, sacrum); columns: size, pedicle width,
    # pedicle angle, axial rotation, process length, bone density
    jitter: np.ndarray
    kidney: np.ndarray  # [4] uniform in [-1, 1]


def _draw_params(seed: int) -> _Params:
    """Draw every random parameter, always in the same order (so small and default agree)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(0.93, 1.07)
    lordosis = rng.uniform(6.0, 18.0)
    fat = rng.uniform(8.0, 35.0)
    width = 320.0 + 0.6 * (fat - 8.0) + rng.uniform(0.0, 24.0)
    depth = 198.0 + 0.8 * (fat - 8.0) + rng.uniform(0.0, 12.0)
    furrow = rng.uniform(2.0, 6.0)
    jitter = rng.uniform(-1.0, 1.0, size=(len(_LEVELS) + 1, 6))
    kidney = rng.uniform(-1.0, 1.0, size=4)
    return _Params(size, lordosis, fat, width, depth, furrow, jitter, kidney)


# --------------------------------------------------------------------------------------------
# layout [mm]: torso cross-section, spine curve, vertebra frames


@dataclass(frozen=True)
class _Torso:
    """Super-elliptic torso cross-section [mm]."""

    cx: float  # midline x
    cy: float  # y of the widest point
    half_w: float
    back: float  # posterior semi-axis
    front: float  # anterior semi-axis
    furrow: float
    fat: float

    @property
    def y_back(self) -> float:
        return self.cy + self.back

    def fat_at(self, y):
        """Fat thickness [mm] at height y: the back value behind cy, up to 1.5x at the belly."""
        return self.fat * (1.0 + 0.5 * np.clip((self.cy - y) / self.front, 0.0, 1.0))

    def wall_at(self, y):
        """Body-wall muscle thickness [mm] at height y: 12 mm in front, 30 mm at the back."""
        return 12.0 + 18.0 * np.clip((y - self.cy) / self.back, 0.0, 1.0)


@dataclass
class _Vertebra:
    """One vertebra in the output frame [mm]: local (u, v, w) = (left, posterior, cranial)."""

    level: _Level
    label: int
    center: np.ndarray  # [3]
    axes: np.ndarray  # [3, 3], columns u, v, w
    body_w: float
    body_d: float
    body_h: float
    canal_w: float
    canal_d: float
    ped_w: float
    ped_h: float
    ped_angle: float  # [rad]
    bone_hu: float  # cancellous HU
    size: float  # scale of this vertebra's dimensions
    process_scale: float  # extra scale of the spinous and transverse process lengths

    @property
    def is_sacrum(self) -> bool:
        return self.label == LABEL_IDS["sacrum"]

    @property
    def v_post(self) -> float:
        """Local v of the flat posterior wall of the body (= front of the canal)."""
        return 0.36 * self.body_d

    def to_world(self, local) -> np.ndarray:
        return self.center + self.axes @ np.asarray(local, float)

    def to_local(self, x, y, z):
        """Local coordinates (u, v, w) of world points given as broadcastable arrays."""
        c, r = [float(a) for a in self.center], [[float(a) for a in row] for row in self.axes]
        d = (x - c[0], y - c[1], z - c[2])
        return tuple(d[0] * r[0][k] + d[1] * r[1][k] + d[2] * r[2][k] for k in range(3))


@dataclass(frozen=True)
class _Layout:
    params: _Params
    extent: np.ndarray  # [3] mm
    torso: _Torso
    vertebrae: list[_Vertebra]
    discs: list[tuple[np.ndarray, np.ndarray, float, float, float]]  # centre, axis, half height, a, b
    curve_z: np.ndarray  # fine z samples of the body centre line (ascending)
    curve_y: np.ndarray  # y of the body centre line at curve_z
    canal_y: np.ndarray  # y of the canal centre line at curve_z
    canal_r: np.ndarray  # [len(curve_z), 2] canal half-width, depth at curve_z
    body_half: np.ndarray  # [len(curve_z), 2] body half-width, half-depth at curve_z
    levels_z: dict[str, float]  # z of each body centre

    def spine_y(self, z):
        return np.interp(z, self.curve_z, self.curve_y)

    def canal_center_y(self, z):
        return np.interp(z, self.curve_z, self.canal_y)


def _layout(p: _Params, small: bool) -> _Layout:
    """Place torso and vertebrae in the default frame, then crop to the small segment if asked."""
    extent = EXTENT_MM.copy()
    torso = _torso(p, extent)
    vertebrae, discs, curve = _place_spine(p, extent, torso)
    layout = _finish_layout(p, extent, torso, vertebrae, discs, curve)
    return _crop_small(layout) if small else layout


def _torso(p: _Params, extent: np.ndarray) -> _Torso:
    back = 0.42 * p.depth
    y_back = extent[1] - _AIR_BEHIND_MM
    return _Torso(cx=extent[0] / 2, cy=y_back - back, half_w=p.width / 2, back=back, front=p.depth - back,
                  furrow=p.furrow, fat=p.fat)


def _curve_frame(z: float, y_of_z, dy_dz) -> tuple[np.ndarray, np.ndarray]:
    """Point on the centre line and rotation (columns left, posterior, cranial) at height z."""
    slope = dy_dz(z)
    norm = np.hypot(1.0, slope)
    w = np.array([0.0, slope, 1.0]) / norm
    v = np.array([0.0, 1.0, -slope]) / norm
    return np.array([0.0, y_of_z(z), z]), np.stack([np.array([1.0, 0.0, 0.0]), v, w], axis=1)


def _place_spine(p: _Params, extent: np.ndarray, torso: _Torso):
    """Stack the vertebrae and discs along the lordotic curve, from T11 downward."""
    s = p.size
    heights = [lv.body_h * s for lv in _LEVELS]
    gaps = [lv.disc_below * s for lv in _LEVELS]
    z_top = extent[2] - _TOP_MARGIN_MM
    # Apex of the lordosis at the L3/L4 disc (nominal stacking along z is close enough here).
    i_l3 = [lv.name for lv in _LEVELS].index("L3")
    z_apex = z_top - sum(heights[: i_l3 + 1]) - sum(gaps[:i_l3]) - gaps[i_l3] / 2
    a = p.lordosis / _LORDOSIS_HALF_SPAN_MM**2

    def y_of_z(z):
        return a * (np.asarray(z) - z_apex) ** 2

    def dy_dz(z):
        return 2.0 * a * (np.asarray(z) - z_apex)

    zs = np.linspace(-100.0, extent[2] + 100.0, 4001)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(zs), np.diff(y_of_z(zs))))])
    s_top = np.interp(z_top, zs, arc)

    def z_at(arc_from_top):
        return float(np.interp(s_top - arc_from_top, arc, zs))

    vertebrae, pos = [], 0.0
    for i, lv in enumerate(_LEVELS):
        vertebrae.append(_make_vertebra(lv, LABEL_IDS[f"vertebrae_{lv.name}"], z_at(pos + heights[i] / 2),
                                        y_of_z, dy_dz, p, p.jitter[i]))
        pos += heights[i] + gaps[i]
    sac_h = _SACRUM.body_h * s
    sacrum = _make_vertebra(_SACRUM, LABEL_IDS["sacrum"], z_at(pos + sac_h / 2), y_of_z, dy_dz, p, p.jitter[-1])
    vertebrae.append(_tilt_sacrum(sacrum, _SACRAL_EXTRA_TILT_DEG))

    _shift_to_back(vertebrae, torso)
    dy = vertebrae[0].center[1] - y_of_z(vertebrae[0].center[2])
    for v in vertebrae:
        v.center[0] += torso.cx
    discs = _discs(vertebrae)
    curve = (zs, y_of_z(zs) + dy)
    return vertebrae, discs, curve


def _make_vertebra(lv: _Level, label: int, z: float, y_of_z, dy_dz, p: _Params, jit: np.ndarray) -> _Vertebra:
    """A vertebra centred on the curve at height z, tilted with it, with per-level jitter."""
    center, axes = _curve_frame(z, y_of_z, dy_dz)
    roll = np.radians(2.0) * jit[3]  # small axial rotation about the cranial axis
    c, sn = np.cos(roll), np.sin(roll)
    u = c * axes[:, 0] + sn * axes[:, 1]
    v = -sn * axes[:, 0] + c * axes[:, 1]
    axes = np.stack([u, v, axes[:, 2]], axis=1)
    s = p.size * (1.0 + 0.03 * jit[0])
    return _Vertebra(
        level=lv, label=label, center=center, axes=axes,
        body_w=lv.body_w * s, body_d=lv.body_d * s, body_h=lv.body_h * p.size,
        canal_w=lv.canal_w * s, canal_d=lv.canal_d * s,
        ped_w=lv.ped_w * s + 0.5 * jit[1], ped_h=lv.ped_h * s, ped_angle=np.radians(lv.ped_angle + 2.0 * jit[2]),
        bone_hu=TISSUE_HU["cancellous_bone"] + 35.0 * jit[5], size=s, process_scale=1.0 + 0.06 * jit[4],
    )


def _tilt_sacrum(v: _Vertebra, degrees: float) -> _Vertebra:
    """Turn the sacrum about its upper endplate's centre so the endplate faces further forward."""
    top = v.to_world([0.0, 0.0, v.body_h / 2])
    a = np.radians(degrees)
    u, p, w = v.axes[:, 0], v.axes[:, 1], v.axes[:, 2]
    w_new = np.cos(a) * w - np.sin(a) * p
    p_new = np.sin(a) * w + np.cos(a) * p
    v.axes = np.stack([u, p_new, w_new], axis=1)
    v.center = top - w_new * v.body_h / 2
    return v


def _shift_to_back(vertebrae: list[_Vertebra], torso: _Torso) -> None:
    """Move the spine along y so that the most posterior spinous tip lies 4 mm under the fat."""
    tips = [v.to_world(_spinous_rod(v).end)[1] + _spinous_rod(v).r2 for v in vertebrae if not v.is_sacrum]
    target = torso.y_back - torso.furrow - SKIN_MM - torso.fat - 4.0
    shift = target - max(tips)
    for v in vertebrae:
        v.center[1] += shift


def _discs(vertebrae: list[_Vertebra]):
    """Disc cylinders between consecutive bodies, plus the one above T11."""
    discs = []
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        bottom = upper.to_world([0, 0, -upper.body_h / 2])
        top = lower.to_world([0, 0, lower.body_h / 2])
        axis = (bottom - top) / np.linalg.norm(bottom - top)
        half = np.linalg.norm(bottom - top) / 2 + 1.5
        discs.append(((bottom + top) / 2, axis, half, 0.97 * (upper.body_w + lower.body_w) / 4,
                      0.97 * (upper.body_d + lower.body_d) / 4))
    first = vertebrae[0]
    h = _DISC_ABOVE_T11_MM * first.size
    discs.append((first.to_world([0, 0, first.body_h / 2 + h / 2]), first.axes[:, 2], h / 2 + 1.5,
                  0.97 * first.body_w / 2, 0.97 * first.body_d / 2))
    return discs


def _finish_layout(p, extent, torso, vertebrae, discs, curve) -> _Layout:
    """Tabulate the canal and body centre lines along z for the soft-tissue painters."""
    zs, ys = curve
    zc = np.array([v.center[2] for v in vertebrae])
    order = np.argsort(zc)
    canal_pts = np.array([v.to_world([0, v.v_post + 0.45 * v.canal_d, 0]) for v in vertebrae])[order]
    canal_y = np.interp(zs, canal_pts[:, 2], canal_pts[:, 1] - np.interp(canal_pts[:, 2], zs, ys)) + ys
    vs = [vertebrae[i] for i in order]
    canal_r = np.stack([np.interp(zs, zc[order], [v.canal_w / 2 for v in vs]),
                        np.interp(zs, zc[order], [v.canal_d for v in vs])], axis=1)
    body_half = np.stack([np.interp(zs, zc[order], [v.body_w / 2 for v in vs]),
                          np.interp(zs, zc[order], [v.body_d / 2 for v in vs])], axis=1)
    levels_z = {v.level.name: float(v.center[2]) for v in vertebrae}
    return _Layout(p, extent, torso, vertebrae, discs, zs, ys, canal_y, canal_r, body_half, levels_z)


def _crop_small(layout: _Layout) -> _Layout:
    """Keep L2-L4 only and the z range of their bone plus margins; shift z so the crop starts at 0."""
    keep = [v for v in layout.vertebrae if v.level.name in _SMALL_LEVELS]
    lo = min(_vertebra_z_range(v)[0] for v in keep) - _SMALL_MARGIN_MM
    hi = max(_vertebra_z_range(v)[1] for v in keep) + _SMALL_MARGIN_MM
    dz = np.array([0.0, 0.0, lo])
    vertebrae = []
    for v in keep:
        vertebrae.append(_Vertebra(**{**v.__dict__, "center": v.center - dz}))
    discs = [(c - dz, ax, h, a, b) for c, ax, h, a, b in layout.discs]
    extent = layout.extent.copy()
    extent[2] = hi - lo
    return _Layout(
        layout.params, extent, layout.torso, vertebrae, discs, layout.curve_z - lo, layout.curve_y,
        layout.canal_y, layout.canal_r, layout.body_half, {k: z - lo for k, z in layout.levels_z.items()},
    )


def _vertebra_z_range(v: _Vertebra) -> tuple[float, float]:
    """Lowest and highest z of the vertebra's bounding box of primitives [mm]."""
    lo, hi = _vertebra_box(v)
    return lo[2], hi[2]


def _vertebra_geometry(v: _Vertebra) -> VertebraGeometry:
    """Public (metre) description of a vertebra."""
    m = 1e-3
    pedicles = {}
    if not v.is_sacrum:
        for side, sign in (("left", 1.0), ("right", -1.0)):
            rod = _pedicle_rod(v, sign)
            post, ant = v.to_world(rod.start), v.to_world(rod.end)
            axis = (ant - post) / np.linalg.norm(ant - post)
            pedicles[side] = PedicleGeometry(
                posterior_m=post * m, anterior_m=ant * m, isthmus_m=v.to_world(_pedicle_isthmus(v, sign)) * m,
                axis=axis, width_m=float(2 * rod.r1 * m), height_m=float(2 * rod.r2 * m),
            )
    name = "sacrum" if v.is_sacrum else vertebra_name(v.label)
    return VertebraGeometry(
        label=v.label, name=name, center_m=v.center * m, axes=v.axes.copy(), body_width_m=float(v.body_w * m),
        body_depth_m=float(v.body_d * m), body_height_m=float(v.body_h * m), canal_width_m=float(v.canal_w * m),
        canal_depth_m=float(v.canal_d * m), canal_center_m=v.to_world([0, v.v_post + 0.45 * v.canal_d, 0]) * m,
        pedicles=pedicles,
    )


# --------------------------------------------------------------------------------------------
# signed-distance primitives [mm]; negative inside


def _sd_ellipse(p, q, a, b):
    """Approximate signed distance to the ellipse (p/a)^2 + (q/b)^2 = 1 (exact on the axes)."""
    k0 = np.sqrt((p / a) ** 2 + (q / b) ** 2)
    k1 = np.sqrt((p / (a * a)) ** 2 + (q / (b * b)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


@dataclass(frozen=True)
class _Rod:
    """Straight rod from ``start`` to ``end`` with an elliptic cross-section and flat ends.

    ``r1`` is the semi-axis along ``hint`` (made orthogonal to the rod), ``r2`` the other one.
    Points are in whatever frame start/end are given in.
    """

    start: np.ndarray
    end: np.ndarray
    hint: np.ndarray
    r1: float
    r2: float

    def frame(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Length and unit vectors (along the rod, along r1, along r2)."""
        d = self.end - self.start
        length = float(np.sqrt(d @ d))
        d = d / length
        e1 = self.hint - (self.hint @ d) * d
        e1 = e1 / np.sqrt(e1 @ e1)
        e2 = np.array([d[1] * e1[2] - d[2] * e1[1], d[2] * e1[0] - d[0] * e1[2], d[0] * e1[1] - d[1] * e1[0]])
        return length, d, e1, e2

    def sdf(self, x, y, z):
        length, d, e1, e2 = (float(a) if np.ndim(a) == 0 else [float(b) for b in a] for a in self.frame())
        s = [float(a) for a in self.start]
        px, py, pz = x - s[0], y - s[1], z - s[2]
        t = px * d[0] + py * d[1] + pz * d[2]
        a = px * e1[0] + py * e1[1] + pz * e1[2]
        b = px * e2[0] + py * e2[1] + pz * e2[2]
        return np.maximum(_sd_ellipse(a, b, self.r1, self.r2), np.abs(t - length / 2) - length / 2)


# --------------------------------------------------------------------------------------------
# vertebra parts in local coordinates (u left, v posterior, w cranial) [mm]

_X = np.array([1.0, 0.0, 0.0])
_Z = np.array([0.0, 0.0, 1.0])


def _pedicle_isthmus(v: _Vertebra, side: float) -> np.ndarray:
    """Local centre of the pedicle beside the canal (its medial wall just reaches the canal)."""
    return np.array([side * (v.canal_w / 2 + v.ped_w / 2 - 0.8), v.v_post + 0.3 * v.canal_d, 0.12 * v.body_h])


def _pedicle_rod(v: _Vertebra, side: float) -> _Rod:
    """Pedicle from the lamina junction (start) forward and medially into the body (end)."""
    c = _pedicle_isthmus(v, side)
    ahead = np.array([-side * np.sin(v.ped_angle), -np.cos(v.ped_angle), 0.0])
    start = c - (0.5 * v.canal_d + 2.0) * ahead
    end = c + (0.3 * v.canal_d + 7.0) * ahead
    return _Rod(start, end, _X, v.ped_w / 2, v.ped_h / 2)


def _spinous_rod(v: _Vertebra) -> _Rod:
    """Spinous process: from the apex of the arch backward and caudally."""
    lv, s = v.level, v.size
    tilt = np.radians(lv.sp_tilt)
    start = np.array([0.0, v.v_post + v.canal_d + 1.0, -0.1 * v.body_h])
    length = lv.sp_len * s * v.process_scale + 5.0
    end = start + length * np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    return _Rod(start, end, _X, 4.0 * s, lv.sp_h * s / 2)


def _transverse_rod(v: _Vertebra, side: float) -> _Rod:
    """Transverse process: flat rod from the pedicle-lamina junction laterally, slightly backward."""
    s = v.size
    start = np.array([side * (v.canal_w / 2 + 0.5 * v.ped_w), v.v_post + 0.55 * v.canal_d, 0.15 * v.body_h])
    reach = v.level.tp_reach * s * v.process_scale
    end = np.array([side * reach, start[1] + 0.18 * (reach - abs(start[0])), start[2]])
    return _Rod(start, end, _Z, 5.0 * s, 3.0 * s)


def _articular_rods(v: _Vertebra, side: float) -> tuple[_Rod, _Rod]:
    """Superior (lateral, reaching up) and inferior (medial, reaching down) articular processes."""
    s, cw, cd, h = v.size, v.canal_w, v.canal_d, v.body_h
    u_sup = side * (cw / 2 + 0.6 * v.ped_w + 1.0)
    sup = _Rod(np.array([u_sup, v.v_post + 0.6 * cd, 0.1 * h]),
               np.array([u_sup, v.v_post + 0.75 * cd, h / 2 + 6.0 * s]), _X, 2.5 * s, 4.5 * s)
    u_inf = side * (cw / 2 - 1.0)
    inf = _Rod(np.array([u_inf, v.v_post + cd + 2.0, -0.2 * h]),
               np.array([u_inf, v.v_post + cd + 2.0, -h / 2 - 7.0 * s]), _X, 2.0 * s, 4.0 * s)
    return sup, inf


def _canal_sdf(v: _Vertebra, u, vv):
    """Half-ellipse canal, apex behind; its flat front is notched _CANAL_NOTCH_MM into the body's
    posterior wall (the posterior wall of a real body is concave)."""
    return np.maximum(_sd_ellipse(u, vv - v.v_post, v.canal_w / 2, v.canal_d), v.v_post - _CANAL_NOTCH_MM - vv)


def _body_sdf(v: _Vertebra, u, vv, w):
    """Elliptic body with a flat posterior wall and a slight waist at mid-height."""
    waist = 1.0 - 0.06 * (1.0 - np.clip(2.0 * w / v.body_h, -1.0, 1.0) ** 2)
    d = _sd_ellipse(u, vv, v.body_w / 2 * waist, v.body_d / 2 * waist)
    return reduce(np.maximum, [d, vv - v.v_post, np.abs(w) - v.body_h / 2])


def _arch_dims(v: _Vertebra) -> tuple[float, float, float]:
    """Lamina thickness, centre height and half height of the posterior arch [mm]. The arch
    reaches up to about the top of the pedicles, so an axial slice through a tilted vertebra's
    pedicles still cuts a closed ring."""
    return 6.5 * v.size, -0.05 * v.body_h, 0.5 * v.body_h


def _arch_sdf(v: _Vertebra, u, vv, w):
    """Posterior arch (laminae): the canal ellipse grown by the lamina thickness, behind the pedicles."""
    t, w0, half = _arch_dims(v)
    outer = _sd_ellipse(u, vv - v.v_post, v.canal_w / 2 + t, v.canal_d + t)
    return reduce(np.maximum, [outer, v.v_post + 0.25 * v.canal_d - vv, np.abs(w - w0) - half])


@dataclass(frozen=True)
class _Part:
    """A primitive of a vertebra: its signed distance ``sdf(u, v, w)`` [mm] and a local box
    (lo, hi) [mm] outside which it is certainly positive."""

    lo: np.ndarray
    hi: np.ndarray
    sdf: Callable[..., np.ndarray]  # (u, v, w) -> signed distance

    @staticmethod
    def rod(rod: _Rod) -> _Part:
        r = max(rod.r1, rod.r2)
        return _Part(np.minimum(rod.start, rod.end) - r, np.maximum(rod.start, rod.end) + r, rod.sdf)


def _body_part(v: _Vertebra) -> _Part:
    return _Part(np.array([-v.body_w / 2, -v.body_d / 2, -v.body_h / 2]),
                 np.array([v.body_w / 2, v.v_post, v.body_h / 2]), lambda u, vv, w: _body_sdf(v, u, vv, w))


def _arch_part(v: _Vertebra) -> _Part:
    t, w0, half = _arch_dims(v)
    return _Part(np.array([-v.canal_w / 2 - t, v.v_post, w0 - half]),
                 np.array([v.canal_w / 2 + t, v.v_post + v.canal_d + t, w0 + half]),
                 lambda u, vv, w: _arch_sdf(v, u, vv, w))


def _canal_part(v: _Vertebra, lo: np.ndarray, hi: np.ndarray) -> _Part:
    """The canal within the cranio-caudal range of the local box (lo, hi)."""
    return _Part(np.array([-v.canal_w / 2, v.v_post - _CANAL_NOTCH_MM, lo[2]]),
                 np.array([v.canal_w / 2, v.v_post + v.canal_d, hi[2]]),
                 lambda u, vv, w: _canal_sdf(v, u, vv))


def _bone_parts(v: _Vertebra) -> list[_Part]:
    """Every bony primitive of the vertebra, in local coordinates."""
    parts = [_body_part(v), _arch_part(v)]
    if v.is_sacrum:  # body, alae and the roof of the sacral canal; no pedicles or processes
        for side in (1.0, -1.0):
            ala = _Rod(np.array([side * 10.0, v.v_post - 4.0, 0.0]),
                       np.array([side * v.level.tp_reach * v.size, v.v_post, 0.0]), _Z, 0.45 * v.body_h, 12.0 * v.size)
            parts.append(_Part.rod(ala))
        return parts
    parts.append(_Part.rod(_spinous_rod(v)))
    for side in (1.0, -1.0):
        parts.append(_Part.rod(_pedicle_rod(v, side)))
        parts.append(_Part.rod(_transverse_rod(v, side)))
        parts.extend(_Part.rod(rod) for rod in _articular_rods(v, side))
    return parts


def _local_box(v: _Vertebra) -> tuple[np.ndarray, np.ndarray]:
    """Local box (lo, hi) [mm] holding all bone of the vertebra."""
    parts = _bone_parts(v)
    return np.min([p.lo for p in parts], axis=0), np.max([p.hi for p in parts], axis=0)


def _world_box(v: _Vertebra, lo, hi, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box [mm] of a local box (lo, hi), grown by ``margin``."""
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = v.center + corners @ v.axes.T
    return world.min(0) - margin, world.max(0) + margin


def _vertebra_box(v: _Vertebra) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box [mm] (lo, hi) of all bone of the vertebra."""
    return _world_box(v, *_local_box(v))


def _vertebra_sdf(v: _Vertebra, grid: _Grid):
    """Signed distance [mm] to the bone of one vertebra (canal carved out) on the grid window
    around it; each primitive is evaluated only inside its own box. Returns (slices, sdf) or None."""
    lo, hi = _local_box(v)
    win = grid.window(*_world_box(v, lo, hi))
    if win is None:
        return None
    sl = win[0]
    sdf = np.full(tuple(s.stop - s.start for s in sl), np.inf, dtype=np.float32)
    for part in _bone_parts(v):
        sub = _part_window(v, part, grid, sl)
        if sub is not None:
            rel, (u, vv, w) = sub
            np.minimum(sdf[rel], part.sdf(u, vv, w), out=sdf[rel])
    sub = _part_window(v, _canal_part(v, lo, hi), grid, sl)
    if sub is not None:
        rel, (u, vv, w) = sub
        np.maximum(sdf[rel], -_canal_sdf(v, u, vv), out=sdf[rel])
    return sl, sdf


def _part_window(v: _Vertebra, part: _Part, grid: _Grid, outer: tuple[slice, ...]):
    """Local coordinates of the voxels of ``part``'s box, and their slices relative to ``outer``."""
    win = grid.window(*_world_box(v, part.lo, part.hi))
    if win is None:
        return None
    sl, x, y, z = win
    rel = []
    for s, o in zip(sl, outer):
        a, b = max(s.start, o.start), min(s.stop, o.stop)
        if b <= a:
            return None
        rel.append((slice(a - o.start, b - o.start), slice(a - s.start, b - s.start)))
    x, y, z = x[rel[0][1]], y[:, rel[1][1]], z[:, :, rel[2][1]]
    return tuple(r[0] for r in rel), v.to_local(x, y, z)


# --------------------------------------------------------------------------------------------
# voxel grid and painting


class _Grid:
    """Isotropic voxel grid: voxel (i, j, k) centre at (i, j, k) * spacing [mm]."""

    def __init__(self, extent_mm: np.ndarray, spacing_mm: float):
        self.spacing = float(spacing_mm)
        self.shape = tuple(max(int(round(e / spacing_mm)), 1) for e in extent_mm)

    def axis(self, a: int, sl: slice = slice(None)) -> np.ndarray:
        return (np.arange(self.shape[a], dtype=np.float32)[sl]) * np.float32(self.spacing)

    def window(self, lo, hi):
        """Slices of the voxels with centres in [lo, hi] (mm) and their coordinates (x, y, z) shaped
        for broadcasting; ``None`` when the box misses the grid."""
        sl = []
        for a in range(3):
            i0 = max(int(np.ceil(lo[a] / self.spacing)), 0)
            i1 = min(int(np.floor(hi[a] / self.spacing)) + 1, self.shape[a])
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        x = self.axis(0, sl[0])[:, None, None]
        y = self.axis(1, sl[1])[None, :, None]
        z = self.axis(2, sl[2])[None, None, :]
        return tuple(sl), x, y, z


class _Volume:
    """HU and label arrays being painted; later paint overwrites earlier paint."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.hu = np.full(grid.shape, TISSUE_HU["air"], dtype=np.int16)
        self.labels = np.zeros(grid.shape, dtype=np.uint8)
        self.depth2d: np.ndarray | None = None  # depth under the skin [mm], shape (X, Y)

    def paint(self, sl, mask, hu, label: int = 0) -> None:
        """Set HU (a scalar or an array shaped like ``mask``) and label where ``mask`` is true."""
        hu_view, lab_view = self.hu[sl], self.labels[sl]
        mask = np.broadcast_to(mask, hu_view.shape)
        hu_view[mask] = hu if np.isscalar(hu) else np.broadcast_to(hu, mask.shape)[mask]
        lab_view[mask] = label

    def depth(self, sl):
        """Depth under the skin [mm] for a window, shaped (nx, ny, 1)."""
        return self.depth2d[sl[0], sl[1]][:, :, None]


# --------------------------------------------------------------------------------------------
# torso layers


def _torso_depth(torso: _Torso, x, y) -> np.ndarray:
    """Approximate depth under the skin [mm] (negative outside) of the super-elliptic torso."""

    def radius(xx, yy):
        dx, dy = xx - torso.cx, yy - torso.cy
        posterior = dy > 0
        dy = np.where(posterior, dy + torso.furrow * np.exp(-(dx / 18.0) ** 2), -dy)
        pw = np.where(posterior, 3.0, 2.2)
        b = np.where(posterior, torso.back, torso.front)
        return ((np.abs(dx) / torso.half_w) ** pw + (np.maximum(dy, 0.0) / b) ** pw) ** (1.0 / pw)

    h = 0.25
    r = radius(x, y)
    gx = (radius(x + h, y) - radius(x - h, y)) / (2 * h)
    gy = (radius(x, y + h) - radius(x, y - h)) / (2 * h)
    return (1.0 - r) / np.maximum(np.hypot(gx, gy), 1e-6)


def _paint_torso(vol: _Volume, layout: _Layout) -> None:
    """Skin, fat, body-wall muscle and abdominal soft tissue: a 2-D section repeated along z."""
    g, torso = vol.grid, layout.torso
    x = g.axis(0).astype(np.float64)[:, None]
    y = g.axis(1).astype(np.float64)[None, :]
    depth = _torso_depth(torso, x, y)
    vol.depth2d = depth
    skin = max(SKIN_MM, g.spacing)
    fat_in = skin + torso.fat_at(y)
    section = np.select(
        [depth < 0, depth < skin, depth < fat_in, depth < fat_in + torso.wall_at(y)],
        [TISSUE_HU["air"], TISSUE_HU["skin"], TISSUE_HU["fat"], TISSUE_HU["muscle"]],
        default=TISSUE_HU["abdomen"],
    ).astype(np.int16)
    vol.hu[...] = section[:, :, None]


def _cavity(vol: _Volume, layout: _Layout, sl, y) -> np.ndarray:
    """Inside the body wall (abdominal cavity and retroperitoneum), shaped (nx, ny, 1)."""
    torso = layout.torso
    return vol.depth(sl) >= max(SKIN_MM, vol.grid.spacing) + torso.fat_at(y) + torso.wall_at(y)


# --------------------------------------------------------------------------------------------
# organs and muscles


def _paint_organs(vol: _Volume, layout: _Layout) -> None:
    """Organs and muscles in order of increasing priority (each overwrites the previous ones)."""
    _paint_liver_spleen(vol, layout)
    _paint_kidneys(vol, layout)
    _paint_psoas(vol, layout)
    _paint_vessels(vol, layout)
    _paint_autochthon(vol, layout)


def _rotation(yaw_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation about z (yaw) after rotation about y (roll, tilts the long z axis toward x)."""
    a, b = np.radians(yaw_deg), np.radians(roll_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rz @ ry


def _ellipsoid(vol: _Volume, center, radii, rot: np.ndarray | None = None):
    """Window and mask of an ellipsoid (radii along the columns of ``rot``) [mm]; None if outside."""
    rot = np.eye(3) if rot is None else rot
    half = np.abs(rot) @ np.asarray(radii, float)
    win = vol.grid.window(np.asarray(center) - half, np.asarray(center) + half)
    if win is None:
        return None
    sl, x, y, z = win
    c, r = [float(a) for a in center], [[float(a) for a in row] for row in rot]
    d = (x - c[0], y - c[1], z - c[2])
    q = sum(((d[0] * r[0][k] + d[1] * r[1][k] + d[2] * r[2][k]) / float(radii[k])) ** 2 for k in range(3))
    return sl, x, y, z, q <= 1.0


def _paint_liver_spleen(vol: _Volume, layout: _Layout) -> None:
    torso, lz = layout.torso, layout.levels_z
    y_spine = layout.spine_y(lz["L1"])
    liver_c = (torso.cx - 0.45 * torso.half_w, y_spine - 25.0, lz["T11"] + 20.0)
    hit = _ellipsoid(vol, liver_c, (0.62 * torso.half_w, 90.0, lz["T11"] + 20.0 - lz["L3"]), _rotation(-15, 0))
    if hit is not None:
        sl, x, y, z, mask = hit
        # Stay in the cavity, and in front of the spine and psoas near the midline.
        keep = _cavity(vol, layout, sl, y) & ((x < torso.cx - 45.0) | (y < layout.spine_y(z) - 30.0))
        vol.paint(sl, mask & keep & (x < torso.cx + 60.0), TISSUE_HU["liver"], LABEL_IDS["liver"])
    spleen_c = (torso.cx + 0.62 * torso.half_w, y_spine + 15.0, lz["T11"] - 5.0)
    hit = _ellipsoid(vol, spleen_c, (28.0, 50.0, 55.0), _rotation(35, 0))
    if hit is not None:
        sl, x, y, z, mask = hit
        vol.paint(sl, mask & _cavity(vol, layout, sl, y), TISSUE_HU["spleen"], LABEL_IDS["spleen"])


def _paint_kidneys(vol: _Volume, layout: _Layout) -> None:
    torso, lz, k, s = layout.torso, layout.levels_z, layout.params.kidney, layout.params.size
    radii = np.array([28.0, 22.0, 55.0]) * s
    for side, name, z0, jit in ((1.0, "kidney_left", (lz["L1"] + lz["L2"]) / 2, k[:2]),
                                (-1.0, "kidney_right", lz["L2"], k[2:])):
        z0 = z0 + 8.0 * jit[0]
        c = (torso.cx + side * (72.0 + 5.0 * jit[1]) * s, layout.spine_y(z0) + 2.0, z0)
        rot = _rotation(side * 30.0, side * -12.0)  # hilum turned forward, upper pole medial
        hit = _ellipsoid(vol, c, radii + 7.0, rot)
        if hit is not None:
            sl, x, y, z, mask = hit
            vol.paint(sl, mask & _cavity(vol, layout, sl, y), TISSUE_HU["perirenal_fat"])
        hit = _ellipsoid(vol, c, radii, rot)
        if hit is not None:
            sl, x, y, z, mask = hit
            vol.paint(sl, mask, TISSUE_HU["kidney"], LABEL_IDS[name])


def _paint_psoas(vol: _Volume, layout: _Layout) -> None:
    """Psoas either side of the bodies, from T12 down, widening caudally."""
    torso, lz = layout.torso, layout.levels_z
    z_top, z_full = lz["T12"], lz["L5"]
    win = vol.grid.window((torso.cx - 110, 0, -1e9), (torso.cx + 110, 1e9, z_top))
    if win is None:
        return
    sl, x, y, z = win
    f = np.clip((z_top - z) / (z_top - z_full), 0.0, 1.0) ** 0.8
    rx, ry = 4.0 + 19.0 * f, 4.0 + 15.0 * f
    half_w = np.interp(z, layout.curve_z, layout.body_half[:, 0])
    yc = layout.spine_y(z) + 2.0 - 10.0 * f
    for side, name in ((1.0, "iliopsoas_left"), (-1.0, "iliopsoas_right")):
        xc = torso.cx + side * (half_w + 0.8 * rx)
        mask = ((x - xc) / rx) ** 2 + ((y - yc) / ry) ** 2 <= 1.0
        vol.paint(sl, mask, TISSUE_HU["muscle"], LABEL_IDS[name])


def _paint_tube(vol: _Volume, xc: float, yc_of_z, z_lo: float, z_hi: float, rx: float, ry: float, hu: int, label: int):
    """Vertical tube with elliptic section centred at (xc, yc(z)) for z in [z_lo, z_hi] [mm]."""
    win = vol.grid.window((xc - rx, -1e9, z_lo), (xc + rx, 1e9, z_hi))
    if win is None:
        return
    sl, x, y, z = win
    mask = ((x - xc) / rx) ** 2 + ((y - yc_of_z(z)) / ry) ** 2 <= 1.0
    vol.paint(sl, mask, hu, label)


def _paint_rod(vol: _Volume, rod: _Rod, hu: int, label: int) -> None:
    r = max(rod.r1, rod.r2)
    win = vol.grid.window(np.minimum(rod.start, rod.end) - r, np.maximum(rod.start, rod.end) + r)
    if win is not None:
        sl, x, y, z = win
        vol.paint(sl, rod.sdf(x, y, z) <= 0, hu, label)


def _paint_vessels(vol: _Volume, layout: _Layout) -> None:
    """IVC (right) and aorta (left) in front of the spine, with the iliac vessels below."""
    torso, lz, ext = layout.torso, layout.levels_z, layout.extent

    def front(z):  # y of the anterior surface of the bodies
        return layout.spine_y(z) - np.interp(z, layout.curve_z, layout.body_half[:, 1])

    blood = TISSUE_HU["blood"]
    z_conf, z_bif = lz["L5"] + 10.0, lz["L4"]
    ivc_x, ao_x = torso.cx - 22.0, torso.cx + 12.0
    _paint_tube(vol, ivc_x, lambda z: front(z) - 11.0, z_conf, ext[2] + 10, 13.0, 9.0, blood,
                LABEL_IDS["inferior_vena_cava"])
    _paint_tube(vol, ao_x, lambda z: front(z) - 14.0, z_bif, ext[2] + 10, 11.0, 11.0, blood, LABEL_IDS["aorta"])
    conf = np.array([ivc_x, front(z_conf) - 11.0, z_conf])
    bif = np.array([ao_x, front(z_bif) - 14.0, z_bif])
    z_end = min(lz["L5"] - 120.0, -20.0)
    for side, suffix in ((1.0, "left"), (-1.0, "right")):
        vein_end = np.array([torso.cx + side * 60.0, front(lz["L5"]) - 5.0, z_end])
        _paint_rod(vol, _Rod(conf, vein_end, _X, 8.0, 8.0), blood, LABEL_IDS[f"iliac_vena_{suffix}"])
    for side, suffix in ((1.0, "left"), (-1.0, "right")):
        art_end = np.array([torso.cx + side * 60.0, front(lz["L5"]) - 15.0, z_end])
        _paint_rod(vol, _Rod(bif, art_end, _X, 6.5, 6.5), blood, LABEL_IDS[f"iliac_artery_{suffix}"])


def _paint_autochthon(vol: _Volume, layout: _Layout) -> None:
    """Erector spinae/multifidus: from the transverse-process plane back to the fat, either side
    of a midline ligament."""
    torso = layout.torso
    half_w = 62.0 * layout.params.size
    lo = (torso.cx - half_w - 4.0, float(layout.canal_y.min()) - 10.0, -1e9)
    win = vol.grid.window(lo, (torso.cx + half_w + 4.0, 1e9, 1e9))
    if win is None:
        return
    sl, x, y, z = win
    y0 = layout.canal_center_y(z)  # anterior limit, at the level of the transverse processes
    reach = (torso.y_back - y0) / 2 + 8.0
    ax = np.abs(x - torso.cx)
    inside = ((ax - 3.0) / half_w) ** 4 + ((y - y0 - reach) / reach) ** 4 <= 1.0
    under_fat = vol.depth(sl) >= max(SKIN_MM, vol.grid.spacing) + torso.fat_at(y) + 1.0
    muscle = inside & under_fat
    vol.paint(sl, muscle & (x > torso.cx + 3.0), TISSUE_HU["muscle"], LABEL_IDS["autochthon_left"])
    vol.paint(sl, muscle & (x < torso.cx - 3.0), TISSUE_HU["muscle"], LABEL_IDS["autochthon_right"])
    vol.paint(sl, inside & under_fat & (ax <= 3.0), TISSUE_HU["ligament"])


# --------------------------------------------------------------------------------------------
# spine


def _paint_spine(vol: _Volume, layout: _Layout) -> None:
    """Discs, canal contents, then bone (bone overwrites everything it covers)."""
    for disc in layout.discs:
        _paint_disc(vol, *disc)
    for v in layout.vertebrae:
        _paint_canal(vol, v)
    _paint_dural_sac(vol, layout)
    for v in layout.vertebrae:
        _paint_bone(vol, v)


def _paint_disc(vol: _Volume, center, axis, half, a, b) -> None:
    r = max(a, b)
    win = vol.grid.window(center - r - half, center + r + half)
    if win is None:
        return
    sl, x, y, z = win
    c, ax = [float(a) for a in center], [float(a) for a in axis]
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    w = dx * ax[0] + dy * ax[1] + dz * ax[2]
    v = dy * ax[2] - dz * ax[1]  # along the posterior direction orthogonal to the axis
    u = dx
    mask = (_sd_ellipse(u, v, a, b) <= 0) & (v <= 0.72 * b) & (np.abs(w) <= half)
    vol.paint(sl, mask, TISSUE_HU["disc"])


def _paint_canal(vol: _Volume, v: _Vertebra) -> None:
    """Epidural fat filling the canal over the vertebra's height and half the discs."""
    reach = v.body_h / 2 + 6.0
    part = _canal_part(v, np.array([0.0, 0.0, -reach]), np.array([0.0, 0.0, reach]))
    win = vol.grid.window(*_world_box(v, part.lo, part.hi))
    if win is None:
        return
    sl, x, y, z = win
    u, vv, w = v.to_local(x, y, z)
    vol.paint(sl, (_canal_sdf(v, u, vv) <= 0) & (np.abs(w) <= reach), TISSUE_HU["epidural_fat"])


def _paint_dural_sac(vol: _Volume, layout: _Layout) -> None:
    """CSF-filled dural sac and the spinal cord along the canal centre line."""
    cx = layout.torso.cx
    z_lo = min(v.center[2] for v in layout.vertebrae) - 40.0
    z_hi = layout.extent[2] + 10.0

    def rw(z):
        return np.interp(z, layout.curve_z, layout.canal_r[:, 0])

    def rd(z):
        return np.interp(z, layout.curve_z, layout.canal_r[:, 1])

    win = vol.grid.window((cx - 15, -1e9, z_lo), (cx + 15, 1e9, z_hi))
    if win is None:
        return
    sl, x, y, z = win
    yc = layout.canal_center_y(z)
    s = layout.params.size
    sac = ((x - cx) / (0.7 * rw(z))) ** 2 + ((y - yc) / (0.38 * rd(z))) ** 2 <= 1.0
    cord = ((x - cx) / (4.5 * s)) ** 2 + ((y - yc) / (3.5 * s)) ** 2 <= 1.0
    vol.paint(sl, sac, TISSUE_HU["csf"])
    vol.paint(sl, cord, TISSUE_HU["spinal_cord"], LABEL_IDS["spinal_cord"])


def _paint_bone(vol: _Volume, v: _Vertebra) -> None:
    """Cortical shell and cancellous interior of one vertebra."""
    hit = _vertebra_sdf(v, vol.grid)
    if hit is None:
        return
    sl, sdf = hit
    cortex = max(CORTEX_MM, vol.grid.spacing)
    hu = np.where(sdf > -cortex, TISSUE_HU["cortical_bone"], round(v.bone_hu)).astype(np.int16)
    vol.paint(sl, sdf <= 0, hu, v.label)
