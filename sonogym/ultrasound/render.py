"""Pictures of the B-mode sensor on a patient: a grid of views and a sweep along the spine.

:func:`render_patient` (the ``sonogym render PATIENT`` command) writes, for the probes asked for:

* ``<out>/<patient>_grid.png``: B-mode images at a few poses on the back over the spine, each beside
  its label slice (TotalSegmentator ids, one colour per structure, black where unlabelled): transverse
  views at up to three vertebrae, a midline and a paramedian sagittal view and a transverse view
  tilted 15 degrees cranially, for every probe. Images are drawn at their physical aspect, axes in
  mm of the probe frame (lateral x, depth z from the face); the letters at the image edges give the
  patient directions there (R/L, A/P, I/S).
* ``<out>/<patient>_sweep_<probe>.gif``: a transverse sweep along the spine, from the most caudal to
  the most cranial vertebra centroid, following the spine's x; all frames are rendered by one
  batched :meth:`UltrasoundSensor.update` call. Each frame shows the B-mode image (grey) beside the
  label slice.

Poses: the face centre comes from :func:`~sonogym.ultrasound.poses.skin_pose` on the posterior skin
at the vertebra centroid's (x, z) (a position off the skin is a :class:`~sonogym.errors.DataError`);
the beam follows the mean skin normal under the face rather than the normal at the centre point,
which on a real back swings by 30 degrees or more across the midline groove. The linear probe is
pressed 1 mm into the skin; the convex probe also by its face sagitta less the gel layer (5.1 mm for
the preset), so that the curved face's ends reach a flat skin (tissue does not deform in the model).
A patient without vertebra labels is scanned around the middle of its back instead. Files are
written atomically (a temporary file in the same folder, then renamed).
"""

from __future__ import annotations

import colorsys
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sonogym.anatomy.labels import TOTALSEG_V2
from sonogym.errors import DataError
from sonogym.ultrasound.poses import matrix_from_quat, probe_frame, quat_from_matrix, skin_pose
from sonogym.ultrasound.probes import ProbeConvex, ProbeLinear, probe_preset

PARAMEDIAN_OFFSET_M = 0.02
"""Lateral offset of the paramedian sagittal view from the spine's midline [m] (to the patient's left)."""

TILT_RAD = math.radians(15.0)
"""Cranial tilt of the tilted transverse view, about the probe's lateral axis [rad]."""

GIF_HEIGHT_PX = 320
"""Height of the B-mode image in the sweep GIF [px]; pixels are resampled to be square."""

GIF_FRAME_MS = 100
"""Display time of one sweep frame [ms]."""

GIF_GREY_LEVELS = 200
"""GIF palette entries 0..199 are grey levels; 200..255 are label colours."""

_DIRECTION_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # patient axes x, y, z: negative, positive end


@dataclass(frozen=True)
class View:
    """One probe pose of the grid: a short name, the pose [7] and where it was asked for."""

    name: str
    pose: np.ndarray  # [7] position [m], quaternion (w, x, y, z)
    x_m: float
    z_m: float
    rotation_rad: float
    tilt_rad: float = 0.0


# ----------------------------------------------------------------------------------- colours
def label_color(label: int) -> tuple[float, float, float]:
    """Stable RGB colour in [0, 1] for a TotalSegmentator id: black for 0, distinct hues for neighbours."""
    if label == 0:
        return (0.0, 0.0, 0.0)
    hue = (label * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.35 * ((label * 7) % 3) / 2
    return colorsys.hsv_to_rgb(hue, saturation, 1.0 if label % 2 else 0.85)


LABEL_RGB = np.array([label_color(i) for i in range(256)], dtype=np.float32)
"""Colour of every label id, float32 [256, 3] in [0, 1]; row 0 (no structure) is black."""


def label_image(labels: np.ndarray) -> np.ndarray:
    """RGB image float32 [H, W, 3] of a label slice [H, W]."""
    return LABEL_RGB[np.asarray(labels, dtype=np.uint8)]


# ----------------------------------------------------------------------------------- poses
def face_half_width_m(probe: ProbeLinear | ProbeConvex) -> float:
    """Half the width of the transducer face along the lateral axis [m]."""
    if isinstance(probe, ProbeConvex):
        return probe.radius_m * math.sin(min(probe.fov_rad / 2, math.pi / 2))
    return probe.width_m / 2


def default_press_m(probe: ProbeLinear | ProbeConvex, gel_m: float | None = None) -> float:
    """How deep the face centre goes into the skin [m]: 1 mm, and for a convex probe also its face sagitta
    less the gel layer, so that the curved face's ends reach the skin of a flat back (tissue does
    not deform in the model; a sonographer presses a convex probe in)."""
    if gel_m is None:
        from sonogym.ultrasound.model import UltrasoundModel

        gel_m = float(getattr(UltrasoundModel(), "gel_m", 0.0))
    press = 1e-3
    if isinstance(probe, ProbeConvex):
        half = min(probe.fov_rad / 2, math.pi / 2)
        sagitta = probe.radius_m * (1.0 - math.cos(half))
        press += max(0.0, sagitta - gel_m)
    return press


def _skin_poses(patient, x_m, z_m, what: str, *, rotation_rad=0.0, footprint_half_m: float = 0.0,
                press_m: float = 1e-3) -> np.ndarray:
    """Poses on the posterior skin at (x, z), with an error that names the pose when it is off the skin.

    The face centre and the validity check come from :func:`skin_pose`. With ``footprint_half_m`` > 0
    the probe looks along the mean inward normal of the skin under its face (a strip of that half
    length along the lateral axis, 1 cm across) instead of the normal at the centre point: on a
    real back the point normal swings by 30 degrees or more across the midline groove, which would
    tip the face out of the skin on one side.
    """
    x_m, z_m = np.broadcast_arrays(np.asarray(x_m, float), np.asarray(z_m, float))
    try:
        pose = skin_pose(patient, x_m, z_m, side="posterior", rotation_rad=rotation_rad, press_m=press_m)
    except ValueError as err:
        points, _ = patient.placement["posterior"].query(x_m, z_m) if "posterior" in patient.placement else (None, None)
        if points is not None:
            bad = np.isnan(points[..., 0]).ravel()
            xs, zs = x_m.ravel()[bad], z_m.ravel()[bad]
            where = f"x = {xs[0] * 1e3:.0f} mm, z = {zs[0] * 1e3:.0f} mm" + (f" (and {bad.sum() - 1} more)" if bad.sum() > 1 else "")
        else:
            where = "any position"
        raise DataError(
            f"cannot place the probe for the {what} of patient {patient.name!r}: {where} is off its posterior skin "
            f"({err}). The volume may be cut there; the views follow the vertebra centroids."
        ) from None
    if footprint_half_m <= 0:
        return pose
    # Mean outward normal over the face's footprint on the (x, z) map.
    rot = np.broadcast_to(np.asarray(rotation_rad, float), x_m.shape)
    u = np.linspace(-footprint_half_m, footprint_half_m, 25)  # along the lateral axis
    v = np.linspace(-5e-3, 5e-3, 3)  # across (elevation)
    uu, vv = (a.ravel() for a in np.meshgrid(u, v, indexing="ij"))
    c, s = np.cos(rot)[..., None], np.sin(rot)[..., None]
    xs = x_m[..., None] + uu * c - vv * s
    zs = z_m[..., None] + uu * s + vv * c
    _, normals = patient.placement["posterior"].query(xs, zs)
    mean = np.nansum(normals, axis=-2)
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    centre_normal = -matrix_from_quat(pose[..., 3:])[..., :, 2]
    mean = np.where(norm > 1e-6, mean / np.maximum(norm, 1e-12), centre_normal)
    points = pose[..., :3] + centre_normal * press_m  # the skin point under the face centre
    out = np.empty_like(pose)
    out[..., :3] = points - mean * press_m
    out[..., 3:] = quat_from_matrix(probe_frame(-mean, np.array([1.0, 0.0, 0.0]), rot))
    return out


def _tilt(pose: np.ndarray, tilt_rad: float) -> np.ndarray:
    """The pose with its beam turned by ``tilt_rad`` about its lateral (x) axis, towards its +y (elevation)."""
    rot = matrix_from_quat(pose[3:])
    x, y, z = rot[:, 0], rot[:, 1], rot[:, 2]
    c, s = math.cos(tilt_rad), math.sin(tilt_rad)
    z_new = c * z + s * y
    y_new = np.cross(z_new, x)
    out = pose.copy()
    out[3:] = quat_from_matrix(np.stack([x, y_new, z_new], -1))
    return out


def _spine_track(patient) -> tuple[Callable[[np.ndarray], np.ndarray], list[tuple[str, float]], tuple[float, float]]:
    """The spine's x as a function of z, anchor (name, z) for the transverse views, and the sweep's z range."""
    vertebrae = sorted(patient.vertebrae, key=lambda v: v.centroid_m[2])  # caudal first
    if vertebrae:
        zs = np.array([v.centroid_m[2] for v in vertebrae])
        xs = np.array([v.centroid_m[0] for v in vertebrae])
        track = lambda z: np.interp(z, zs, xs)  # noqa: E731
        picks = sorted(set(np.linspace(0, len(vertebrae) - 1, min(3, len(vertebrae))).round().astype(int).tolist()))
        anchors = [(vertebrae[i].name, float(zs[i])) for i in reversed(picks)]  # cranial first
        z_range = (float(zs[0]), float(zs[-1]))
    else:  # no spine labels: the middle of the back
        placement = patient.placement["posterior"]
        i, k = np.nonzero(placement.valid)
        if len(i) == 0:
            raise DataError(f"patient {patient.name!r} has no posterior skin to place a probe on")
        z_mid = float(np.median(k)) * placement.spacing_m
        row = i[np.abs(k * placement.spacing_m - z_mid) <= placement.spacing_m]
        x_mid = float((row.min() + row.max()) / 2) * placement.spacing_m
        track = lambda z: np.full_like(np.asarray(z, float), x_mid)  # noqa: E731
        anchors = [("centre +30 mm", z_mid + 0.03), ("centre", z_mid), ("centre -30 mm", z_mid - 0.03)]
        z_range = (z_mid - 0.05, z_mid + 0.05)
    lo, hi = z_range
    if hi - lo < 0.04:  # one vertebra: sweep 4 cm around it
        mid = (lo + hi) / 2
        z_range = (mid - 0.02, mid + 0.02)
    return track, anchors, z_range


def grid_views(patient, *, footprint_half_m: float = 0.03, press_m: float = 1e-3) -> list[View]:
    """The grid's poses: transverse at up to three vertebrae, sagittal (midline, paramedian) and tilted transverse.

    Each probe looks along the mean skin normal over ``footprint_half_m`` either side of its centre,
    its face centre ``press_m`` inside the skin.
    """
    track, anchors, _ = _spine_track(patient)
    half_pi = math.pi / 2

    def pose(x, z, what, rotation=0.0):
        return _skin_poses(patient, x, z, what, rotation_rad=rotation, footprint_half_m=footprint_half_m, press_m=press_m)

    views = []
    for name, z in anchors:
        x = float(track(z))
        views.append(View(f"{name} transverse", pose(x, z, f"{name} transverse view"), x, z, 0.0))
    name, z = anchors[len(anchors) // 2]
    x = float(track(z))
    views.append(View(f"{name} sagittal", pose(x, z, f"{name} sagittal view", half_pi), x, z, half_pi))
    xp = x + PARAMEDIAN_OFFSET_M
    views.append(View(f"{name} paramedian sagittal", pose(xp, z, f"{name} paramedian view", half_pi), xp, z, half_pi))
    views.append(View(f"{name} transverse, tilted", _tilt(pose(x, z, f"{name} tilted view"), TILT_RAD), x, z, 0.0, TILT_RAD))
    return views


def sweep_poses(patient, frames: int, *, footprint_half_m: float = 0.03,
                press_m: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transverse poses [frames, 7] along the spine, caudal to cranial, and their x, z [frames] [m]."""
    track, _, (z0, z1) = _spine_track(patient)
    z = np.linspace(z0, z1, frames)
    x = track(z)
    return _skin_poses(patient, x, z, "spine sweep", footprint_half_m=footprint_half_m, press_m=press_m), x, z


# ----------------------------------------------------------------------------------- geometry
def image_extent_mm(probe: ProbeLinear | ProbeConvex) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) [mm] of a probe's image: lateral x, depth z down."""
    if isinstance(probe, ProbeConvex):
        x0, x1, z0, z1 = probe.image_extent()
    else:
        x0, x1, z0, z1 = -probe.width_m / 2, probe.width_m / 2, 0.0, probe.depth_m
    return x0 * 1e3, x1 * 1e3, z1 * 1e3, z0 * 1e3


def _edge_letters(pose: np.ndarray) -> tuple[str, str]:
    """Patient directions at the left (-x) and right (+x) image edges, e.g. ("R", "L")."""
    lateral = matrix_from_quat(pose[3:])[:, 0]

    def name(v):
        return "".join(_DIRECTION_LETTERS[a][int(v[a] > 0)] for a in np.argsort(-np.abs(v)) if abs(v[a]) > 0.3)

    return name(-lateral), name(lateral)


def _fan_outline(probe: ProbeConvex) -> tuple[np.ndarray, np.ndarray]:
    """Outline of a convex probe's sector in the probe frame [mm], (x, z) arrays."""
    half, r0, r1 = probe.fov_rad / 2, probe.radius_m, probe.radius_m + probe.depth_m
    a = np.linspace(-half, half, 64)
    inner = np.stack([r0 * np.sin(a), r0 * np.cos(a) - r0], 1)
    outer = np.stack([r1 * np.sin(a[::-1]), r1 * np.cos(a[::-1]) - r0], 1)
    pts = np.concatenate([inner, outer, inner[:1]]) * 1e3
    return pts[:, 0], pts[:, 1]


# ----------------------------------------------------------------------------------- files
def _atomic_write(path: Path, write: Callable) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------- rendering
@dataclass
class _Rendered:
    name: str
    probe: ProbeLinear | ProbeConvex
    press_m: float
    views: list[View]
    grid_images: np.ndarray  # [V, H, W] float32
    grid_labels: np.ndarray  # [V, H, W] uint8
    sweep_x_m: np.ndarray  # [F]
    sweep_z_m: np.ndarray  # [F]
    sweep_images: np.ndarray  # [F, H, W]
    sweep_labels: np.ndarray
    timings_s: dict


def _render_probe(patient, name: str, frames: int, device: str, press_m: float | None) -> _Rendered:
    """Poses for one probe, then the grid views and the sweep with one sensor (num_envs = the larger batch)."""
    import torch

    from sonogym.ultrasound.sensor import UltrasoundSensor

    probe = probe_preset(name)
    press = default_press_m(probe) if press_m is None else float(press_m)
    footprint = face_half_width_m(probe)
    views = grid_views(patient, footprint_half_m=footprint, press_m=press)
    sweep, sweep_x, sweep_z = sweep_poses(patient, frames, footprint_half_m=footprint, press_m=press)
    n = max(frames, len(views))
    t = time.perf_counter()
    sensor = UltrasoundSensor([patient], probe, num_envs=n, device=device, label_slices=True)
    setup_s = time.perf_counter() - t
    patient_idx = torch.zeros(n, dtype=torch.int32, device=sensor.device)

    def batch(poses):  # pad to the sensor's batch size
        poses = np.concatenate([poses, np.repeat(poses[-1:], n - len(poses), 0)])
        return torch.as_tensor(poses, dtype=torch.float32, device=sensor.device)

    try:
        pose = batch(np.stack([v.pose for v in views]))
        t = time.perf_counter()
        sensor.update(pose, patient_idx)
        _sync(sensor.device)
        grid_s = time.perf_counter() - t
        grid_images = sensor.images[: len(views)].cpu().numpy().copy()
        grid_labels = sensor.labels[: len(views)].cpu().numpy().copy()

        pose = batch(sweep)
        _sync(sensor.device)
        t = time.perf_counter()
        sensor.update(pose, patient_idx)
        _sync(sensor.device)
        sweep_s = time.perf_counter() - t
        sweep_images = sensor.images[:frames].cpu().numpy().copy()
        sweep_labels = sensor.labels[:frames].cpu().numpy().copy()
    finally:
        sensor.close()
    timings = {"setup_s": setup_s, "grid_s": grid_s, "sweep_s": sweep_s, "sweep_fps": frames / max(sweep_s, 1e-9)}
    return _Rendered(name, probe, press, views, grid_images, grid_labels, sweep_x, sweep_z, sweep_images, sweep_labels, timings)


def _probe_caption(probe) -> str:
    return f"{probe.kind} {probe.frequency_mhz:g} MHz"


def plot_grid(patient, rendered: Sequence[_Rendered], path: Path, *, dpi: int = 100) -> Path:
    """Write the grid PNG: one row per view, per probe a B-mode column and a label column."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    extents = [image_extent_mm(r.probe) for r in rendered]
    widths = []
    for left, right, bottom, top in extents:
        widths += [(right - left) / (bottom - top)] * 2
    rows = len(rendered[0].views)
    row_h = 3.1
    fig = plt.figure(figsize=(sum(widths) * row_h * 0.92 + 1.2, row_h * rows + 1.6), constrained_layout=True)
    axes = fig.subplots(rows, len(widths), gridspec_kw={"width_ratios": widths}, squeeze=False)
    present: set[int] = set()
    for row in range(rows):
        for col, (r, extent) in enumerate(zip(rendered, extents)):
            view = r.views[row]
            left_letter, right_letter = _edge_letters(view.pose)
            ax_b, ax_l = axes[row, 2 * col], axes[row, 2 * col + 1]
            ax_b.imshow(r.grid_images[row], cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
            ax_l.imshow(label_image(r.grid_labels[row]), extent=extent, interpolation="nearest")
            present.update(np.unique(r.grid_labels[row]).tolist())
            if isinstance(r.probe, ProbeConvex):
                ax_l.plot(*_fan_outline(r.probe), color="0.45", linewidth=0.6)
            tilt = f", tilt {math.degrees(view.tilt_rad):.0f} deg" if view.tilt_rad else ""
            ax_b.set_title(
                f"{view.name} | {_probe_caption(r.probe)}\nx={view.x_m * 1e3:.0f} z={view.z_m * 1e3:.0f} mm, "
                f"rot {math.degrees(view.rotation_rad):.0f} deg{tilt}, press {r.press_m * 1e3:.1f} mm",
                fontsize=8,
            )
            ax_l.set_title(f"labels | {view.name}", fontsize=8)
            for ax in (ax_b, ax_l):
                ax.set_xlim(extent[0], extent[1])
                ax.set_ylim(extent[2], extent[3])
                ax.tick_params(labelsize=7)
                ax.set_xlabel("lateral [mm]", fontsize=7)
                ax.text(0.02, 0.98, left_letter, transform=ax.transAxes, color="yellow", fontsize=8, va="top")
                ax.text(0.98, 0.98, right_letter, transform=ax.transAxes, color="yellow", fontsize=8, va="top", ha="right")
            ax_b.set_ylabel("depth [mm]", fontsize=7)
    present.discard(0)
    handles = [Patch(color=LABEL_RGB[i], label=TOTALSEG_V2.get(i, f"id {i}")) for i in sorted(present)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(
        f"{patient.name}: B-mode (left) and label slice (right) per probe, posterior skin; "
        f"edge letters = patient directions (R/L, A/P, I/S)",
        fontsize=10,
    )
    path = _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return path


def _gif_frames(patient, r: _Rendered) -> list:
    """Palette ("P") frames: B-mode grey beside the label slice, square pixels, with a caption strip."""
    from PIL import Image, ImageDraw

    left, right, bottom, top = image_extent_mm(r.probe)
    height = GIF_HEIGHT_PX
    width = max(8, int(round(height * (right - left) / (bottom - top))))
    caption, gap = 16, 4
    ids = sorted(set(np.unique(r.sweep_labels).tolist()) - {0})
    slots = 256 - GIF_GREY_LEVELS
    lut = np.zeros(256, dtype=np.uint8)  # label id -> palette index
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:GIF_GREY_LEVELS] = np.round(np.linspace(0, 255, GIF_GREY_LEVELS))[:, None].astype(np.uint8)
    for rank, label in enumerate(ids):
        lut[label] = GIF_GREY_LEVELS + rank % slots
        palette[GIF_GREY_LEVELS + rank % slots] = np.round(LABEL_RGB[label] * 255).astype(np.uint8)
    outline = None
    if isinstance(r.probe, ProbeConvex):  # the sector's edge on the label panel
        inside = np.isfinite(r.probe.pixel_positions()[..., 0]).astype(np.uint8) * 255
        inside = np.asarray(Image.fromarray(inside).resize((width, height), Image.NEAREST)) > 0
        pad = np.pad(inside, 1)
        interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        outline = inside & ~interior
    frames = []
    for n in range(len(r.sweep_images)):
        grey = Image.fromarray(r.sweep_images[n].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
        grey = np.clip(np.round(np.asarray(grey) * (GIF_GREY_LEVELS - 1)), 0, GIF_GREY_LEVELS - 1).astype(np.uint8)
        labels = lut[np.asarray(Image.fromarray(r.sweep_labels[n]).resize((width, height), Image.NEAREST))]
        if outline is not None:
            labels = np.where(outline & (labels == 0), GIF_GREY_LEVELS // 3, labels)
        canvas = np.zeros((caption + height, 2 * width + gap), dtype=np.uint8)
        canvas[caption:, :width] = grey
        canvas[caption:, width + gap:] = labels
        image = Image.fromarray(canvas, mode="P")
        image.putpalette(palette.ravel().tolist())
        z = r.sweep_z_m[n]
        nearest = min(patient.vertebrae, key=lambda v: abs(v.centroid_m[2] - z)).name if patient.vertebrae else "-"
        text = f"{patient.name} {_probe_caption(r.probe)}  z={z * 1e3:.0f} mm (near {nearest})  {n + 1}/{len(r.sweep_images)}"
        ImageDraw.Draw(image).text((3, 2), text, fill=GIF_GREY_LEVELS - 1)
        frames.append(image)
    return frames


def write_gif(frames: list, path: Path) -> Path:
    """Write palette frames as a looping GIF, atomically."""
    return _atomic_write(
        path,
        lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0,
                                 optimize=False, disposal=1),
    )


def render_patient(
    patient,
    out_dir: str | os.PathLike,
    *,
    probes: Sequence[str] = ("linear", "convex"),
    frames: int = 40,
    device: str = "cpu",
    press_m: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Render the view grid and the spine sweeps of a patient (see the module docstring).

    Args:
        patient: a :class:`~sonogym.anatomy.Patient`.
        out_dir: folder for the files (created).
        probes: probe preset names (``"linear"``, ``"convex"``).
        frames: frames of each sweep GIF (>= 2), rendered in one batched update.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        press_m: depth of the face centre inside the skin [m]; None: :func:`default_press_m` per probe.
        log: called with one line per result (paths and timings); None for quiet.

    Returns:
        ``{"grid": png, "sweep_<probe>": gif, ...}``.

    Raises:
        DataError: a pose is off the patient's posterior skin.
        ValueError: unknown probe name or too few frames.
    """
    if int(frames) != frames or frames < 2:
        raise ValueError(f"frames={frames}; a sweep needs an integer >= 2")
    probes = list(dict.fromkeys(probes))
    if not probes:
        raise ValueError("no probes given; use 'linear' and/or 'convex'")
    for name in probes:
        probe_preset(name)  # unknown names fail before any work
    out_dir = Path(out_dir)
    log = log or (lambda line: None)

    rendered = []
    for name in probes:
        r = _render_probe(patient, name, int(frames), device, press_m)
        rendered.append(r)
        t = r.timings_s
        log(
            f"{name:7s} sensor set-up {t['setup_s']:.2f} s; grid {len(r.views)} poses {t['grid_s']:.2f} s "
            f"(first update); sweep {frames} frames in one update {t['sweep_s']:.3f} s "
            f"= {t['sweep_fps']:.0f} frames/s on {device}"
        )
    paths = {"grid": plot_grid(patient, rendered, out_dir / f"{patient.name}_grid.png")}
    log(f"grid    {paths['grid']}")
    for r in rendered:
        key = f"sweep_{r.name}"
        paths[key] = write_gif(_gif_frames(patient, r), out_dir / f"{patient.name}_sweep_{r.name}.gif")
        log(f"sweep   {paths[key]}  (z {r.sweep_z_m[0] * 1e3:.0f} -> {r.sweep_z_m[-1] * 1e3:.0f} mm, {frames} frames)")
    return paths
