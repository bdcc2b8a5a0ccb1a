"""The batched B-mode sensor: buffers allocated once, ``update(probe_pose, patient_idx) -> images``."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from sonogym.anatomy.tissues import TissueTable
from sonogym.ultrasound import model as model_mod
from sonogym.ultrasound.model import PackedPatients, UltrasoundModel, class_tables
from sonogym.ultrasound.probes import ProbeConvex, ProbeLinear, elevation_offsets

_WARP_READY = False


def _warp():
    """Import and initialise Warp on first use (quietly)."""
    global _WARP_READY
    import warp as wp

    if not _WARP_READY:
        if hasattr(wp, "LOG_WARNING"):
            wp.config.log_level = wp.LOG_WARNING
        wp.init()
        _WARP_READY = True
    return wp


def psf_weights(sigma_px: float) -> np.ndarray:
    """Normalised Gaussian taps (sum 1), float32 [2 PSF_RADIUS + 1], for a standard deviation in
    samples; taps beyond 3 sigma are zero."""
    radius = model_mod.PSF_RADIUS
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / max(sigma_px, 1e-6)) ** 2)
    w[np.abs(k) > max(3.0 * sigma_px, 0.5)] = 0.0
    return (w / w.sum()).astype(np.float32)


def gel_samples_count(model: UltrasoundModel, probe) -> int:
    """Samples from the face that air may fill as coupling gel (depth < ``model.gel_m``)."""
    return int(math.ceil(model.gel_m / probe.sample_step_m - 0.5))


def check_pose(probe_pose: torch.Tensor, patient_idx: torch.Tensor, num_envs: int, num_patients: int, device: torch.device, check_values: bool) -> None:
    """Raise a clear error for a pose batch that the sensor cannot render (shape, dtype, device, values)."""
    if not isinstance(probe_pose, torch.Tensor) or not isinstance(patient_idx, torch.Tensor):
        raise TypeError(f"probe_pose and patient_idx must be torch tensors, got {type(probe_pose).__name__} and {type(patient_idx).__name__}")
    if probe_pose.shape != (num_envs, 7):
        raise ValueError(
            f"probe_pose has shape {tuple(probe_pose.shape)}; expected ({num_envs}, 7): "
            "position [m] and unit quaternion (w, x, y, z) per env"
        )
    if patient_idx.shape != (num_envs,):
        raise ValueError(f"patient_idx has shape {tuple(patient_idx.shape)}; expected ({num_envs},), one patient index per env")
    if probe_pose.device != device or patient_idx.device != device:
        raise ValueError(
            f"probe_pose is on {probe_pose.device} and patient_idx on {patient_idx.device}, but the sensor runs on {device}; "
            f"move them with .to('{device}')"
        )
    if not probe_pose.is_floating_point():
        raise TypeError(f"probe_pose must be a floating-point tensor, got {probe_pose.dtype}")
    if patient_idx.is_floating_point() or patient_idx.dtype == torch.bool:
        raise TypeError(f"patient_idx must be an integer tensor, got {patient_idx.dtype}")
    if not check_values:
        return
    # These checks read values back, which synchronises a GPU; turn them off with check_inputs=False.
    finite = torch.isfinite(probe_pose).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise ValueError(f"probe_pose has NaN or infinite values in envs {bad}; check the policy's actions and the robot state")
    qnorm = torch.linalg.vector_norm(probe_pose[:, 3:], dim=1)
    if not bool((qnorm > 1e-6).all()):
        bad = torch.nonzero(qnorm <= 1e-6).flatten()[:5].tolist()
        raise ValueError(f"probe_pose has a zero-norm quaternion in envs {bad}; give the orientation as a unit quaternion (w, x, y, z)")
    lo, hi = int(patient_idx.min()), int(patient_idx.max())
    if lo < 0 or hi >= num_patients:
        raise IndexError(f"patient_idx holds values in [{lo}, {hi}] but the sensor has {num_patients} patient(s) (valid: 0..{num_patients - 1})")


class UltrasoundSensor:
    """Renders B-mode images for a batch of probe poses on packed patients.

    Args:
        patients: the patients the envs can be on (sonogym ``Patient`` objects, or anything with
            ``labels``, ``hu`` [X, Y, Z] and ``spacing_m``), packed once.
        probe: a :class:`ProbeLinear` or :class:`ProbeConvex`.
        num_envs: batch size N.
        device: ``"cpu"`` or ``"cuda[:i]"``; all inputs and outputs live there.
        model: B-mode model parameters (:class:`UltrasoundModel`).
        tissues: tissue table (default: the shipped one).
        label_slices: also render the TotalSegmentator label under each pixel (:attr:`labels`).
        check_inputs: check pose values (finite, non-zero quaternions, patient range) in ``update``;
            on a GPU this synchronises, so a training loop that validates its actions can turn it off.
        num_threads: CPU threads rendering chunks of the batch in parallel (default: the usable
            cores). Ignored on CUDA.

    Attributes (buffers, allocated once and overwritten by each :meth:`update`):
        images: float32 [N, H, W] in [0, 1], depth along H.
        envelope: float32 [N, H, W], envelope amplitude after TGC, before log compression
            (a perfect reflector at the face with TGC off gives 1 summed over the axial PSF).
        labels: uint8 [N, H, W] label slice, or None unless ``label_slices``.
    """

    def __init__(
        self,
        patients: Sequence,
        probe: ProbeLinear | ProbeConvex,
        num_envs: int,
        device: str | torch.device = "cpu",
        *,
        model: UltrasoundModel | None = None,
        tissues: TissueTable | None = None,
        label_slices: bool = False,
        check_inputs: bool = True,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(probe, (ProbeLinear, ProbeConvex)):
            raise TypeError(f"probe must be a ProbeLinear or ProbeConvex, got {type(probe).__name__}")
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; need a positive integer")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was requested but CUDA is not available; use device='cpu'")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r} is not supported; use 'cpu' or 'cuda[:i]'")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        wp = _warp()
        self._wp = wp
        self._wp_device = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index}"
        self.probe = probe
        self.model = model or UltrasoundModel()
        self.tissues = tissues or TissueTable.load()
        self.num_envs = int(num_envs)
        self.check_inputs = check_inputs
        self.packed = PackedPatients.from_patients(patients, self.tissues, with_labels=label_slices)
        self.num_patients = len(self.packed.names)
        self.tables = class_tables(self.tissues, probe, self.model)
        self.is_linear = isinstance(probe, ProbeLinear)
        self.image_size = probe.image_size
        num_lines, num_samples = int(probe.num_lines), int(probe.num_samples)
        n = self.num_envs
        dev = self.device

        def wpa(array, dtype):
            return wp.array(np.ascontiguousarray(array), dtype=dtype, device=self._wp_device)

        # Patient volumes and tables (constant).
        self._classes = wpa(self.packed.classes, wp.uint8)
        self._labels_vol = wpa(self.packed.labels, wp.uint8) if label_slices else None
        self._offsets = wpa(self.packed.offsets, wp.int32)
        self._dims = wpa(self.packed.dims, wp.vec3i)
        self._spacing = wpa(self.packed.spacing_m, wp.float32)
        self._impedance = wpa(self.tables.impedance, wp.float32)
        self._attenuation = wpa(self.tables.attenuation_step, wp.float32)
        self._scatter = wpa(self.tables.scatter_gain, wp.float32)
        self._threshold = wpa(self.tables.density_threshold, wp.int32)
        origins, directions = probe.line_geometry()
        self._line_origin = wpa(origins.astype(np.float32), wp.vec3)
        self._line_dir = wpa(directions.astype(np.float32), wp.vec3)
        self._elevation = wpa(elevation_offsets(probe).astype(np.float32), wp.float32)
        sigma_axial, sigma_lateral = probe.psf_sigma_px()
        self.psf_axial = psf_weights(sigma_axial)
        self.psf_lateral = psf_weights(sigma_lateral)
        vec9f = self._kernels().vec9f
        self._w_axial = vec9f(*self.psf_axial.tolist())
        self._w_lateral = vec9f(*self.psf_lateral.tolist())

        # Per-env outputs, owned by torch and viewed by Warp (zero-copy).
        self._pose = torch.zeros(n, 7, device=dev)
        self._pose[:, 3] = 1.0
        self._patient = torch.zeros(n, dtype=torch.int32, device=dev)
        height, width = self.image_size
        self.images = torch.zeros(n, height, width, device=dev)
        self.envelope = torch.zeros(n, height, width, device=dev)
        self.labels = torch.zeros(n, height, width, dtype=torch.uint8, device=dev) if label_slices else None
        if label_slices:
            pixels = probe.pixel_positions()
            inside = np.isfinite(pixels[..., 0])
            self._pixels = wpa(np.nan_to_num(pixels).astype(np.float32), wp.vec3)
            self._inside = wpa(inside.astype(np.uint8), wp.uint8)
        if not self.is_linear:
            from sonogym.ultrasound.reference import scan_conversion_map

            source, weights, gain = scan_conversion_map(probe, self.model.tgc_db_per_m(probe.frequency_mhz))
            self._sc_source = wpa(source.numpy(), wp.int32)
            self._sc_weights = wpa(weights.numpy(), wp.vec2)
            self._sc_gain = wpa(gain.numpy(), wp.float32)

        # Chunks of envs: on the CPU each chunk is rendered by one thread, one env at a time, through
        # a scratch buffer of one env (it stays in cache); on CUDA one launch covers all envs.
        if self.device.type == "cpu":
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = num_threads or usable
            if int(threads) != threads or threads < 1:
                raise ValueError(f"num_threads={num_threads}; need a positive integer")
            threads = min(int(threads), n)
        else:
            threads = 1
        bounds = np.linspace(0, n, threads + 1).round().astype(int)
        self._chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        scratch_envs = 1 if self.device.type == "cpu" else n
        pad = 2 * model_mod.PSF_RADIUS
        self._scratch = []
        for _ in self._chunks:
            buffers = {
                "iq": torch.zeros(scratch_envs, num_lines, num_samples + pad, 2, device=dev),  # echoes, zero margins
                "iq_axial": torch.zeros(scratch_envs, num_samples, num_lines + pad, 2, device=dev),  # axial PSF applied
                "polar": None if self.is_linear else torch.zeros(scratch_envs, num_samples, num_lines, device=dev),
            }
            self._scratch.append(buffers)
        self._w = {
            "pose": wp.from_torch(self._pose),
            "patient": wp.from_torch(self._patient),
            "images": wp.from_torch(self.images.view(-1)),
            "envelope": wp.from_torch(self.envelope.view(-1)),
            "labels": None if self.labels is None else wp.from_torch(self.labels),
        }
        self._pool: ThreadPoolExecutor | None = None
        self._launches = [self._record_launches(i) for i in range(len(self._chunks))]

    # ------------------------------------------------------------------------------------------
    def _record_launches(self, chunk: int) -> list:
        """Launch objects for one chunk of envs, recorded once and replayed by every update."""
        wp = self._wp
        probe, model, w = self.probe, self.model, self._w
        env0, env1 = self._chunks[chunk]
        scratch = {k: None if v is None else wp.from_torch(v.view(-1, 2) if k.startswith("iq") else v.view(-1), dtype=wp.vec2 if k.startswith("iq") else None)
                   for k, v in self._scratch[chunk].items()}
        num_lines, num_samples = int(probe.num_lines), int(probe.num_samples)
        height, width = self.image_size
        seed_hash = wp.uint32((int(model.seed) * model_mod.HASH_SEED) & 0xFFFFFFFF)
        tgc = model.tgc_db_per_m(probe.frequency_mhz)
        floor = model.noise_floor_amplitude()
        kernels = self._kernels()
        per_env = self.device.type == "cpu"
        launches = []
        groups = [(e, e + 1) for e in range(env0, env1)] if per_env else [(env0, env1)]
        for first, last in groups:
            count = last - first
            scratch_env0 = first if per_env else 0
            common = dict(device=self._wp_device, record_cmd=True)
            launches.append(
                wp.launch(
                    kernels.march_lines,
                    dim=count * num_lines,
                    inputs=[
                        self._classes, self._offsets, self._dims, self._spacing,
                        self._impedance, self._attenuation, self._scatter, self._threshold,
                        int(self.tables.air_class), int(self.tables.gel_class),
                        w["pose"], w["patient"], self._line_origin, self._line_dir, self._elevation, self._w_axial,
                        num_samples, float(probe.sample_step_m), gel_samples_count(model, probe),
                        float(1.0 / model.speckle_cell_m), seed_hash, float(model.specular_exponent / 2.0),
                        first, scratch_env0,
                    ],
                    outputs=[scratch["iq"], scratch["iq_axial"]],
                    **common,
                )
            )
            launches.append(
                wp.launch(
                    kernels.lateral_psf_envelope, dim=count * num_samples,
                    inputs=[
                        scratch["iq_axial"], self._w_lateral, num_lines, num_samples, int(self.is_linear),
                        float(probe.sample_step_m), float(tgc), float(floor), float(model.gain_db),
                        float(model.dynamic_range_db), first, scratch_env0,
                    ],
                    outputs=[w["envelope"] if self.is_linear else scratch["polar"], w["images"]],
                    **common,
                )
            )
            if not self.is_linear:
                launches.append(
                    wp.launch(
                        kernels.scan_convert, dim=count * height,
                        inputs=[
                            scratch["polar"], self._sc_source, self._sc_weights, self._sc_gain, num_lines, num_samples,
                            width, float(floor), float(model.gain_db), float(model.dynamic_range_db), first, scratch_env0,
                        ],
                        outputs=[w["envelope"], w["images"]],
                        **common,
                    )
                )
        if self.labels is not None:
            launches.append(
                wp.launch(
                    kernels.label_slice, dim=(env1 - env0) * height * width,
                    inputs=[self._labels_vol, self._offsets, self._dims, self._spacing, w["pose"], w["patient"],
                            self._pixels, self._inside, env0],
                    outputs=[w["labels"]],
                    device=self._wp_device, record_cmd=True,
                )
            )
        return launches

    @staticmethod
    def _kernels():
        from sonogym.ultrasound import kernels

        return kernels

    def _run_chunk(self, index: int) -> None:
        for launch in self._launches[index]:
            launch.launch()

    # ------------------------------------------------------------------------------------------
    def update(self, probe_pose: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        """Render the images for a batch of probe poses.

        Args:
            probe_pose: [N, 7] float, per env the transducer-face centre in the patient frame [m]
                and the probe orientation as a quaternion (w, x, y, z) (normalised here); probe axes
                x = lateral, y = elevation, z = axial (into the body).
            patient_idx: [N] int, which packed patient each env is on.

        Returns:
            :attr:`images`, float32 [N, H, W] in [0, 1] (the same tensor every call; clone it to keep
            a frame). :attr:`envelope` and :attr:`labels` are updated too.
        """
        check_pose(probe_pose, patient_idx, self.num_envs, self.num_patients, self.device, self.check_inputs)
        self._pose.copy_(probe_pose)
        self._patient.copy_(patient_idx)
        if self.device.type == "cuda":
            wp = self._wp
            with wp.ScopedStream(wp.stream_from_torch(torch.cuda.current_stream(self.device))):
                self._run_chunk(0)
        elif len(self._chunks) == 1:
            self._run_chunk(0)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(self._chunks), thread_name_prefix="sonogym-us")
            futures = [self._pool.submit(self._run_chunk, i) for i in range(1, len(self._chunks))]
            self._run_chunk(0)
            for future in futures:
                future.result()
        return self.images

    def close(self) -> None:
        """Stop the CPU worker threads (they also stop when the sensor is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    @property
    def memory_bytes(self) -> dict[str, int]:
        """Memory held [bytes]: ``patients`` (packed volumes), ``per_env`` (pose and output images) and
        ``scratch`` (working buffers: one env per CPU thread, or all envs on CUDA)."""
        outputs = [self._pose, self._patient, self.images, self.envelope] + ([self.labels] if self.labels is not None else [])
        scratch = [t for buffers in self._scratch for t in buffers.values() if t is not None]
        nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        return {"patients": self.packed.nbytes, "per_env": nbytes(outputs) // self.num_envs, "scratch": nbytes(scratch)}
