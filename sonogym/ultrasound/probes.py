"""Ultrasound probe geometries: linear and convex arrays, in physical units.

Probe frame (both probes): origin at the centre of the transducer face; **x lateral** (along the
array), **y elevation** (across the array), **z axial** (into the body). Images are ``[H, W]`` with
depth along H (row 0 at the face) and lateral position along W (column 0 at -x).

* :class:`ProbeLinear`: ``num_lines`` parallel scan lines, evenly spread over ``width_m``; the
  image *is* the scan-line grid (W = ``num_lines``, H = ``num_samples``).
* :class:`ProbeConvex`: ``num_lines`` scan lines fanning out from a virtual apex ``radius_m``
  behind the face centre over ``fov_rad``; each line starts on the curved face. Lines are sampled
  on a polar grid and scan-converted to a Cartesian ``image_size`` image that spans the sector's
  bounding box (depth from the face corners to ``depth_m``); pixels outside the sector are black.

Presets: :func:`linear_spine` (the reference system's 150 x 200 px image at 0.4 mm) and
:func:`convex_abdomen`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

SPEED_OF_SOUND_M_S = 1540.0
"""Nominal speed of sound the scanner assumes for beamforming and depth [m/s]."""


def _check_common(probe) -> list[str]:
    """Problems with the fields every probe has, as readable strings."""
    problems = []
    if not (math.isfinite(probe.frequency_mhz) and 0.5 <= probe.frequency_mhz <= 50.0):
        problems.append(f"frequency_mhz={probe.frequency_mhz} (give the centre frequency in MHz, 0.5..50)")
    if not (math.isfinite(probe.depth_m) and 0.0 < probe.depth_m <= 0.5):
        problems.append(f"depth_m={probe.depth_m} (the imaging depth must be positive and at most 0.5 m)")
    if int(probe.num_lines) != probe.num_lines or probe.num_lines < 2:
        problems.append(f"num_lines={probe.num_lines} (need an integer >= 2)")
    if int(probe.num_samples) != probe.num_samples or probe.num_samples < 8:
        problems.append(f"num_samples={probe.num_samples} (need an integer >= 8)")
    if not (math.isfinite(probe.pulse_cycles) and 0.5 <= probe.pulse_cycles <= 20):
        problems.append(f"pulse_cycles={probe.pulse_cycles} (0.5..20)")
    if not (math.isfinite(probe.f_number) and 0.5 <= probe.f_number <= 20):
        problems.append(f"f_number={probe.f_number} (0.5..20)")
    if int(probe.elevation_planes) != probe.elevation_planes or not 1 <= probe.elevation_planes <= 16:
        problems.append(f"elevation_planes={probe.elevation_planes} (an integer 1..16)")
    if not (math.isfinite(probe.elevation_width_m) and 0.0 <= probe.elevation_width_m <= 0.02):
        problems.append(f"elevation_width_m={probe.elevation_width_m} (0..0.02 m)")
    return problems


@dataclass(frozen=True)
class ProbeLinear:
    """A linear array: parallel scan lines along z, spread over x.

    Attributes:
        frequency_mhz: centre frequency [MHz].
        num_lines: scan lines = image width W [px].
        width_m: aperture (field-of-view) width along x [m].
        depth_m: imaging depth along z [m].
        num_samples: samples per line = image height H [px].
        pulse_cycles: transmit pulse length [cycles]; axial PSF FWHM = pulse_cycles * wavelength / 2.
        f_number: focal number; lateral PSF FWHM = f_number * wavelength.
        elevation_width_m: slice thickness [m] spanned by the elevation planes.
        elevation_planes: parallel planes (at y offsets across ``elevation_width_m``) whose echoes
            are summed coherently; 1 = an infinitely thin slice.
    """

    frequency_mhz: float = 5.0
    num_lines: int = 150
    width_m: float = 0.06
    depth_m: float = 0.08
    num_samples: int = 200
    pulse_cycles: float = 3.0
    f_number: float = 3.0
    elevation_width_m: float = 0.0
    elevation_planes: int = 1

    kind = "linear"

    def __post_init__(self) -> None:
        problems = _check_common(self)
        if not (math.isfinite(self.width_m) and 0.0 < self.width_m <= 0.5):
            problems.append(f"width_m={self.width_m} (the aperture width must be positive and at most 0.5 m)")
        if problems:
            raise ValueError("invalid ProbeLinear: " + "; ".join(problems))

    @property
    def image_size(self) -> tuple[int, int]:
        """Output image (H, W) [px]."""
        return (int(self.num_samples), int(self.num_lines))

    @property
    def sample_step_m(self) -> float:
        """Distance between samples along a line [m]."""
        return self.depth_m / self.num_samples

    @property
    def line_pitch_m(self) -> float:
        """Distance between neighbouring scan lines [m]."""
        return self.width_m / self.num_lines

    def line_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Scan-line start points and unit directions in the probe frame, each float64 [L, 3] (m)."""
        x = (np.arange(self.num_lines) + 0.5 - self.num_lines / 2) * self.line_pitch_m
        origins = np.stack([x, np.zeros_like(x), np.zeros_like(x)], 1)
        directions = np.tile([0.0, 0.0, 1.0], (self.num_lines, 1))
        return origins, directions

    def pixel_positions(self) -> np.ndarray:
        """Probe-frame position of every image pixel centre, float64 [H, W, 3] (m); NaN outside the field."""
        origins, _ = self.line_geometry()
        depth = (np.arange(self.num_samples) + 0.5) * self.sample_step_m
        pts = np.zeros((self.num_samples, self.num_lines, 3))
        pts[..., 0] = origins[None, :, 0]
        pts[..., 2] = depth[:, None]
        return pts

    def psf_sigma_px(self) -> tuple[float, float]:
        """Gaussian PSF standard deviation (axial along a line [samples], lateral [lines])."""
        return _psf_sigma(self, self.line_pitch_m)

    def replace(self, **changes) -> ProbeLinear:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ProbeConvex:
    """A convex (curvilinear) array: scan lines fanning out from a virtual apex behind the face.

    Attributes:
        frequency_mhz: centre frequency [MHz].
        num_lines: scan lines across the fan.
        radius_m: radius of curvature of the face [m]; the apex lies at z = -radius_m.
        fov_rad: angle spanned by the fan [rad], at most pi.
        depth_m: imaging depth along each line, from the face [m].
        num_samples: samples per line.
        image_size: scan-converted output image (H, W) [px].
        pulse_cycles, f_number, elevation_width_m, elevation_planes: as for :class:`ProbeLinear`.
    """

    frequency_mhz: float = 3.5
    num_lines: int = 128
    radius_m: float = 0.05
    fov_rad: float = 1.0
    depth_m: float = 0.15
    num_samples: int = 256
    image_size: tuple[int, int] = (256, 304)
    pulse_cycles: float = 3.0
    f_number: float = 3.0
    elevation_width_m: float = 0.0
    elevation_planes: int = 1

    kind = "convex"

    def __post_init__(self) -> None:
        problems = _check_common(self)
        if not (math.isfinite(self.radius_m) and 0.0 < self.radius_m <= 0.5):
            problems.append(f"radius_m={self.radius_m} (the face radius must be positive and at most 0.5 m)")
        if not (math.isfinite(self.fov_rad) and 0.0 < self.fov_rad <= math.pi):
            problems.append(f"fov_rad={self.fov_rad} (the field of view must lie in (0, pi] rad)")
        size = tuple(self.image_size)
        if len(size) != 2 or any(int(s) != s or s < 8 for s in size):
            problems.append(f"image_size={self.image_size} (need (H, W) integers >= 8)")
        if problems:
            raise ValueError("invalid ProbeConvex: " + "; ".join(problems))
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))

    @property
    def sample_step_m(self) -> float:
        """Distance between samples along a line [m]."""
        return self.depth_m / self.num_samples

    @property
    def line_pitch_rad(self) -> float:
        """Angle between neighbouring scan lines [rad]."""
        return self.fov_rad / self.num_lines

    def line_angles(self) -> np.ndarray:
        """Angle of each scan line from the z axis towards +x [rad], float64 [L]."""
        return (np.arange(self.num_lines) + 0.5 - self.num_lines / 2) * self.line_pitch_rad

    def line_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Scan-line start points (on the curved face) and unit directions, float64 [L, 3] each (m)."""
        a = self.line_angles()
        directions = np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], 1)
        apex = np.array([0.0, 0.0, -self.radius_m])
        return apex + self.radius_m * directions, directions

    def image_extent(self) -> tuple[float, float, float, float]:
        """Cartesian image box in the probe frame: (x_min, x_max, z_min, z_max) [m]."""
        half = self.fov_rad / 2
        r_out = self.radius_m + self.depth_m
        x_max = r_out * math.sin(half) if half < math.pi / 2 else r_out
        z_min = self.radius_m * (math.cos(half) - 1.0)
        return -x_max, x_max, z_min, self.depth_m

    def pixel_size_m(self) -> tuple[float, float]:
        """Cartesian pixel size (along H = z, along W = x) [m]."""
        x0, x1, z0, z1 = self.image_extent()
        return (z1 - z0) / self.image_size[0], (x1 - x0) / self.image_size[1]

    def pixel_positions(self) -> np.ndarray:
        """Probe-frame position of every image pixel centre, float64 [H, W, 3] (m); NaN outside the sector."""
        x0, x1, z0, z1 = self.image_extent()
        dz, dx = self.pixel_size_m()
        z = z0 + (np.arange(self.image_size[0]) + 0.5) * dz
        x = x0 + (np.arange(self.image_size[1]) + 0.5) * dx
        pts = np.zeros((*self.image_size, 3))
        pts[..., 0] = x[None, :]
        pts[..., 2] = z[:, None]
        line, sample = self.polar_index(pts[..., 0], pts[..., 2])
        outside = (line < -0.5) | (line > self.num_lines - 0.5) | (sample < -0.5) | (sample > self.num_samples - 0.5)
        pts[outside] = np.nan
        return pts

    def polar_index(self, x_m, z_m):
        """Fractional (line, sample) indices of probe-frame points (x, 0, z) [m]."""
        zr = np.asarray(z_m) + self.radius_m
        rho = np.hypot(x_m, zr) - self.radius_m
        theta = np.arctan2(x_m, zr)
        return (theta + self.fov_rad / 2) / self.line_pitch_rad - 0.5, rho / self.sample_step_m - 0.5

    def psf_sigma_px(self) -> tuple[float, float]:
        """Gaussian PSF standard deviation (axial along a line [samples], lateral [lines])."""
        # Lateral width in lines, taken at the middle of the depth range (beams diverge with depth).
        pitch_mid = (self.radius_m + self.depth_m / 2) * self.line_pitch_rad
        return _psf_sigma(self, pitch_mid)

    def replace(self, **changes) -> ProbeConvex:
        return dataclasses.replace(self, **changes)


def _psf_sigma(probe, lateral_pitch_m: float) -> tuple[float, float]:
    wavelength = SPEED_OF_SOUND_M_S / (probe.frequency_mhz * 1e6)
    fwhm_to_sigma = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    axial = probe.pulse_cycles * wavelength / 2 * fwhm_to_sigma / probe.sample_step_m
    lateral = probe.f_number * wavelength * fwhm_to_sigma / lateral_pitch_m
    return axial, lateral


def elevation_offsets(probe) -> np.ndarray:
    """y offsets of the elevation planes [m], float64 [E]."""
    e = int(probe.elevation_planes)
    if e == 1:
        return np.zeros(1)
    return (np.arange(e) + 0.5 - e / 2) * (probe.elevation_width_m / e)


def linear_spine() -> ProbeLinear:
    """Linear spine probe: 5 MHz, 150 lines over 60 mm, 80 mm deep, 150 x 200 px at 0.4 mm."""
    return ProbeLinear()


def convex_abdomen() -> ProbeConvex:
    """Convex abdominal probe: 3.5 MHz, 128 lines, 50 mm radius, 1.0 rad fan, 150 mm deep, 256 x 304 px."""
    return ProbeConvex()


PRESETS = {"linear": linear_spine, "convex": convex_abdomen}
"""Probe presets by name."""


def probe_preset(name: str):
    """A probe preset by name (``"linear"`` or ``"convex"``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown probe preset {name!r}; presets: {', '.join(PRESETS)}") from None
