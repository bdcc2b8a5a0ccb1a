"""B-mode ultrasound simulation: a batched Warp sensor, its torch reference, probes and tools.

Use
---
>>> from sonogym.ultrasound import UltrasoundSensor, linear_spine
>>> sensor = UltrasoundSensor([patient], linear_spine(), num_envs=64, device="cpu")
>>> images = sensor.update(probe_pose, patient_idx)   # [64, 200, 150] float32 in [0, 1]

``probe_pose`` is ``[N, 7]``: the transducer-face centre in the patient frame [m] and a unit
quaternion (w, x, y, z) for the probe axes (x lateral along the array, y elevation, z axial into the
body). ``patient_idx`` is ``[N]``. :func:`skin_pose` builds poses that put the face on the skin.

The model, per scan line
------------------------
Probe geometry (:mod:`sonogym.ultrasound.probes`): a linear probe has ``num_lines`` parallel lines
over ``width_m``; a convex probe fans ``num_lines`` lines over ``fov_rad`` from a virtual apex
``radius_m`` behind the face and is scan-converted to a Cartesian image. Each line is sampled at
``num_samples`` points, ``depth_m / num_samples`` apart. With ``elevation_planes`` > 1 the line is
traced in parallel planes across ``elevation_width_m`` and their echoes are summed coherently.

Along each line, starting from the probe lens (impedance ``coupling_impedance_mrayl``):

1. **Tissue class** at each sample from the patient's tissue-class volume (TotalSegmentator labels,
   and HU bins for unlabelled voxels, mapped by the tissue table ``assets/tissues.yaml``): the class
   with the largest trilinear weight among the 8 voxels around the sample. Away from boundaries this
   is the voxel's class; at boundaries it follows the smooth trilinear iso-surface, so oblique
   surfaces have no voxel staircase. Outside the volume is air.
2. **Attenuation**: the round-trip amplitude falls by ``10**(-2 alpha f ds / 20)`` per step ds,
   with the class's alpha [dB/(cm MHz)] at the probe frequency f [MHz].
3. **Interfaces**: where the class changes from impedance Z1 to Z2, the reflection coefficient is
   ``R = ((Z2 - Z1) / (Z2 + Z1))**2``; the echo has intensity ``R |cos theta|**specular_exponent``
   (theta between the beam and the surface normal, the gradient of the trilinear indicator of the
   new class), and only ``1 - R`` is transmitted, on the way in and again on the way back (round-trip
   amplitude factor 1 - R). Bone (R ~ 0.37 then 200 dB/cm at 5 MHz) and air (R ~ 1) cast shadows.
   The lens-to-first-sample interface is not imaged (the transducer's dead zone) but it is
   transmitted, so air at the face leaves the image black.
4. **Speckle**: a complex scatterer field fixed in the patient frame: hashed complex values on a
   lattice of spacing ``speckle_cell_m`` (a node scatters with the class's scatterer density),
   interpolated over the lattice tetrahedron around the sample. The same tissue gives the same
   speckle when the probe moves over it; nothing is stored. Its amplitude is the class's
   ``scatter_amplitude`` times ``10**(scatter_db/20)``, after the same attenuation and transmission.
5. **PSF**: separable Gaussian, axial FWHM ``pulse_cycles * wavelength / 2``, lateral FWHM
   ``f_number * wavelength`` (wavelength = 1540 m/s / f), applied to the complex echo signal.
6. **Envelope** ``|iq|``, **TGC** (``+2 tgc_db_cm_mhz f d`` dB at depth d), an optional **noise
   floor** (``noise_floor_db`` below full scale, in quadrature), and **log compression**:
   ``image = clip(1 + (20 log10(envelope) + gain_db) / dynamic_range_db, 0, 1)``.

All parameters, with units, are on :class:`UltrasoundModel`, :class:`ProbeLinear` and
:class:`ProbeConvex`. :mod:`sonogym.ultrasound.reference` implements the same model in plain torch
(slow, readable) and the tests hold the two together.
"""

from sonogym.ultrasound.model import UltrasoundModel
from sonogym.ultrasound.poses import skin_pose
from sonogym.ultrasound.probes import PRESETS, ProbeConvex, ProbeLinear, convex_abdomen, linear_spine, probe_preset

__all__ = [
    "PRESETS",
    "ProbeConvex",
    "ProbeLinear",
    "UltrasoundModel",
    "UltrasoundSensor",
    "convex_abdomen",
    "linear_spine",
    "probe_preset",
    "skin_pose",
]


def __getattr__(name):
    # The sensor imports torch and Warp; load it on first use so that importing the package is light.
    if name == "UltrasoundSensor":
        from sonogym.ultrasound.sensor import UltrasoundSensor

        return UltrasoundSensor
    raise AttributeError(f"module 'sonogym.ultrasound' has no attribute {name!r}")
