"""The tissue table: acoustic properties of tissue classes, and the voxel -> class rule.

The table is read from ``assets/tissues.yaml`` (see that file for every value and its source).
Each tissue class (air, lung, fat, soft_tissue, muscle, liver, kidney, spleen, blood, fluid,
bone, cartilage, spinal_cord, brain) has, in physical units:

* ``speed_of_sound_m_s``    speed of sound [m/s]
* ``density_kg_m3``         mass density [kg/m^3]
* ``impedance_mrayl``       acoustic impedance [MRayl]; equals c * rho / 1e6 within 2 %
* ``attenuation_db_cm_mhz`` attenuation at 1 MHz [dB/(cm MHz)], taken as linear in frequency
* ``scatterer_density``     relative number of scatterers per resolution cell, 0..1
* ``scatter_amplitude``     relative echogenicity of the diffuse scatter, 0 (anechoic) .. 1

Class ids are the positions in ``names`` (the order of the YAML file). The arrays are indexed by
class id, so ``table.impedance_mrayl[class_volume]`` gives an impedance volume.

Voxel -> class rule (:meth:`TissueTable.classify`), from a TotalSegmentator v2 label volume and the
CT in Hounsfield units on the same grid:

* label 1..255 listed in the YAML map: ``label_to_class[label]`` (e.g. vertebrae -> bone,
  aorta -> blood, lung lobes -> lung);
* label not listed (e.g. 118 or 200): soft_tissue, with one warning naming the ids;
* label 0 (no structure: air around the body and unlabelled skin, fat, muscle, discs, CSF):
  by HU bins, half-open ``[edge_i, edge_{i+1})`` with the shipped edges
  ``< -400 air | -400..-190 lung (gas/tissue mixture) | -190..-30 fat | -30..200 soft_tissue |
  >= 200 bone``. A NaN HU counts as below every edge (air).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sonogym.paths import asset_path
from sonogym.errors import DataError

PROPERTIES: tuple[str, ...] = (
    "speed_of_sound",
    "density",
    "impedance",
    "attenuation",
    "scatterer_density",
    "scatter_amplitude",
)
"""Properties every class in the YAML file must give."""

REQUIRED_SOURCES: tuple[str, ...] = ("speed_of_sound", "density", "attenuation", "scatter")
"""Keys every class's ``sources`` mapping must give (impedance is derived from c and rho)."""

IMPEDANCE_TOLERANCE = 0.02
"""Largest allowed relative difference between the stated impedance and c * rho / 1e6."""

FALLBACK_CLASS = "soft_tissue"
"""Class of label ids the table does not list; it must exist in every table."""

DEFAULT_TABLE = "tissues.yaml"
"""Asset name of the shipped table."""


@dataclass(frozen=True)
class TissueTable:
    """Tissue classes with acoustic properties, and the label/HU -> class rule.

    All per-class arrays have length ``C = len(names)`` and are read-only.

    Attributes:
        names: class names; the index is the class id.
        speed_of_sound_m_s: float32 [C], m/s.
        density_kg_m3: float32 [C], kg/m^3.
        impedance_mrayl: float32 [C], MRayl.
        attenuation_db_cm_mhz: float32 [C], dB/(cm MHz).
        scatterer_density: float32 [C], relative 0..1.
        scatter_amplitude: float32 [C], relative 0..1.
        label_to_class: uint8 [256], label id -> class id; ids the table does not list map to
            soft_tissue, and entry 0 is unused (label 0 goes through the HU bins).
        known_labels: bool [256], True for label 0 and for every id the table lists.
        hu_thresholds: float32 [K-1], strictly increasing HU edges for label-0 voxels.
        hu_classes: uint8 [K], class id of each HU bin; bin i is [hu_thresholds[i-1], hu_thresholds[i]).
        sources: citation per ``"<class>.<property>"`` (property one of speed_of_sound, density,
            attenuation, scatter, optionally impedance) and full references per
            ``"reference.<key>"``.
        path: the file the table was read from.
    """

    names: tuple[str, ...]
    speed_of_sound_m_s: np.ndarray
    density_kg_m3: np.ndarray
    impedance_mrayl: np.ndarray
    attenuation_db_cm_mhz: np.ndarray
    scatterer_density: np.ndarray
    scatter_amplitude: np.ndarray
    label_to_class: np.ndarray
    known_labels: np.ndarray
    hu_thresholds: np.ndarray
    hu_classes: np.ndarray
    sources: dict[str, str]
    path: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> TissueTable:
        """Read and validate a tissue table YAML file (default: the shipped ``assets/tissues.yaml``).

        Raises:
            FileNotFoundError: the file does not exist.
            DataError: the file is not valid YAML or breaks a rule of the table; the message names
                the file and the problem.
        """
        file = asset_path(DEFAULT_TABLE) if path is None else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"tissue table {file} does not exist")
        try:
            data = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except _DuplicateKeyError as exc:
            raise DataError(
                f"tissue table {file}: line {exc.line}: duplicate key {exc.key!r} "
                "(each class name and each label id may appear only once)"
            ) from None
        except yaml.YAMLError as exc:
            raise DataError(f"tissue table {file}: not valid YAML: {exc}") from None
        return _parse(data, str(file))

    def class_id(self, name: str) -> int:
        """Class id of a class name, e.g. ``"bone"``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown tissue class {name!r}; classes: {', '.join(self.names)}") from None

    def check_labels(self, label_ids: Iterable[int]) -> list[int]:
        """Return the label ids the table does not list (sorted), warning once if there are any.

        Unknown ids (not in the YAML map, or outside 0..255) are classified as soft tissue; one
        ``UserWarning`` lists all of them.
        """
        unknown = sorted(
            {int(i) for i in label_ids if not (0 <= int(i) <= 255 and self.known_labels[int(i)])}
        )
        if unknown:
            warnings.warn(
                f"label ids {unknown} are not in the tissue table {self.path}; "
                f"they are treated as {FALLBACK_CLASS}",
                UserWarning,
                stacklevel=2,
            )
        return unknown

    def classify(self, labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
        """Class id volume (uint8, same shape) from a label volume and the CT [HU] on the same grid.

        Labelled voxels take ``label_to_class``; label-0 voxels take the class of their HU bin.
        Label ids the table does not list become soft tissue, with one warning (see
        :meth:`check_labels`).
        """
        labels = np.asarray(labels)
        hu = np.asarray(hu)
        if labels.shape != hu.shape:
            raise ValueError(f"labels shape {labels.shape} differs from HU shape {hu.shape}")
        if labels.dtype.kind not in "iub":
            raise TypeError(f"labels must hold integer ids, got dtype {labels.dtype}")

        if labels.dtype == np.uint8:
            present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
            self.check_labels(present.tolist())
            classes = self.label_to_class[labels]
        else:
            present = np.unique(labels)
            self.check_labels(present.tolist())
            in_range = (labels >= 0) & (labels <= 255)
            classes = self.label_to_class[np.where(in_range, labels, 0).astype(np.intp)]
            classes[~in_range] = self.class_id(FALLBACK_CLASS)

        unlabelled = labels == 0
        if unlabelled.any():
            values = hu[unlabelled].astype(np.float32, copy=False)
            bins = np.searchsorted(self.hu_thresholds, values, side="right")
            bins[np.isnan(values)] = 0
            classes[unlabelled] = self.hu_classes[bins]
        return classes


# ----------------------------------------------------------------------------------------------
# YAML reading and validation


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key = key
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: let the normal constructor report it
            continue
        if duplicate:
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse(data: Any, path: str) -> TissueTable:
    def fail(problem: str) -> DataError:
        return DataError(f"tissue table {path}: {problem}")

    if not isinstance(data, Mapping):
        raise fail("the top level must be a mapping with keys 'classes', 'label_to_class', 'hu_rules'")
    for key in ("classes", "label_to_class", "hu_rules"):
        if key not in data:
            raise fail(f"missing top-level key {key!r}")
    unexpected = set(data) - {"classes", "label_to_class", "hu_rules", "references"}
    if unexpected:
        raise fail(f"unexpected top-level keys {sorted(map(str, unexpected))}")

    sources: dict[str, str] = {}
    references = data.get("references") or {}
    if not isinstance(references, Mapping):
        raise fail("'references' must map a short key to a citation")
    for key, text in references.items():
        sources[f"reference.{key}"] = str(text)

    # Classes ---------------------------------------------------------------------------------
    classes = data["classes"]
    if not isinstance(classes, Mapping) or not classes:
        raise fail("'classes' must be a non-empty mapping of class name -> properties")
    if len(classes) > 255:
        raise fail(f"{len(classes)} classes; at most 255 fit in a uint8 class volume")
    names = tuple(str(name) for name in classes)
    values: dict[str, list[float]] = {prop: [] for prop in PROPERTIES}
    for name, entry in classes.items():
        if not isinstance(entry, Mapping):
            raise fail(f"class {name!r} must be a mapping of properties")
        unexpected = set(entry) - set(PROPERTIES) - {"sources"}
        if unexpected:
            raise fail(f"class {name!r} has unknown keys {sorted(map(str, unexpected))}; allowed: {', '.join(PROPERTIES)}, sources")
        for prop in PROPERTIES:
            if prop not in entry:
                raise fail(f"class {name!r} is missing property {prop!r}")
            if not _is_number(entry[prop]):
                raise fail(f"class {name!r}: {prop} must be a finite number, got {entry[prop]!r}")
        c, rho, z = float(entry["speed_of_sound"]), float(entry["density"]), float(entry["impedance"])
        if c <= 0:
            raise fail(f"class {name!r}: speed_of_sound must be positive, got {c}")
        if rho <= 0:
            raise fail(f"class {name!r}: density must be positive, got {rho}")
        expected = c * rho / 1e6
        if abs(z - expected) > IMPEDANCE_TOLERANCE * expected:
            raise fail(
                f"class {name!r}: impedance {z} MRayl is inconsistent with speed_of_sound * density "
                f"= {c} * {rho} / 1e6 = {expected:.6g} MRayl (tolerance {IMPEDANCE_TOLERANCE:.0%})"
            )
        if entry["attenuation"] < 0:
            raise fail(f"class {name!r}: attenuation must be >= 0, got {entry['attenuation']}")
        for prop in ("scatterer_density", "scatter_amplitude"):
            if not 0.0 <= entry[prop] <= 1.0:
                raise fail(f"class {name!r}: {prop} must lie in 0..1, got {entry[prop]}")
        for prop in PROPERTIES:
            values[prop].append(float(entry[prop]))

        class_sources = entry.get("sources")
        if not isinstance(class_sources, Mapping):
            raise fail(f"class {name!r} is missing its 'sources' mapping ({', '.join(REQUIRED_SOURCES)})")
        for key in REQUIRED_SOURCES:
            if not class_sources.get(key):
                raise fail(f"class {name!r} has no source for {key!r}")
        for key, text in class_sources.items():
            sources[f"{name}.{key}"] = str(text)

    if FALLBACK_CLASS not in names:
        raise fail(f"no class {FALLBACK_CLASS!r}; it is required as the class of unlisted label ids")
    class_ids = {name: i for i, name in enumerate(names)}

    def class_of(name: Any, where: str) -> int:
        if not isinstance(name, str) or name not in class_ids:
            raise fail(f"{where} maps to unknown class {name!r}; classes: {', '.join(names)}")
        return class_ids[name]

    # Label map -------------------------------------------------------------------------------
    label_map = data["label_to_class"]
    if not isinstance(label_map, Mapping):
        raise fail("'label_to_class' must map label ids to class names")
    label_to_class = np.full(256, class_ids[FALLBACK_CLASS], dtype=np.uint8)
    known_labels = np.zeros(256, dtype=bool)
    known_labels[0] = True
    for label_id, name in label_map.items():
        if not isinstance(label_id, int) or isinstance(label_id, bool) or not 1 <= label_id <= 255:
            raise fail(
                f"label_to_class: key {label_id!r} is not a label id in 1..255 "
                "(label 0 is classified by hu_rules)"
            )
        label_to_class[label_id] = class_of(name, f"label_to_class: label {label_id}")
        known_labels[label_id] = True

    # HU rules --------------------------------------------------------------------------------
    rules = data["hu_rules"]
    if not isinstance(rules, list) or not rules:
        raise fail("'hu_rules' must be a non-empty list of {below: HU, class: name} rules")
    thresholds: list[float] = []
    hu_classes: list[int] = []
    for i, rule in enumerate(rules):
        last = i == len(rules) - 1
        where = f"hu_rules[{i}]"
        if not isinstance(rule, Mapping) or "class" not in rule:
            raise fail(f"{where} must be a mapping with a 'class' (and, except for the last rule, 'below')")
        unexpected = set(rule) - {"class", "below"}
        if unexpected:
            raise fail(f"{where} has unknown keys {sorted(map(str, unexpected))}; allowed: below, class")
        hu_classes.append(class_of(rule["class"], where))
        if last:
            if "below" in rule:
                raise fail(f"{where}: the last rule takes every HU above the previous edge and must not have 'below'")
            continue
        if "below" not in rule or not _is_number(rule["below"]):
            raise fail(f"{where} needs a numeric 'below' HU edge (only the last rule has none)")
        edge = float(rule["below"])
        if thresholds and edge <= thresholds[-1]:
            raise fail(f"HU thresholds must be strictly increasing: {where} has below={edge} after {thresholds[-1]}")
        thresholds.append(edge)

    def frozen(array: np.ndarray) -> np.ndarray:
        array.setflags(write=False)
        return array

    return TissueTable(
        names=names,
        speed_of_sound_m_s=frozen(np.asarray(values["speed_of_sound"], dtype=np.float32)),
        density_kg_m3=frozen(np.asarray(values["density"], dtype=np.float32)),
        impedance_mrayl=frozen(np.asarray(values["impedance"], dtype=np.float32)),
        attenuation_db_cm_mhz=frozen(np.asarray(values["attenuation"], dtype=np.float32)),
        scatterer_density=frozen(np.asarray(values["scatterer_density"], dtype=np.float32)),
        scatter_amplitude=frozen(np.asarray(values["scatter_amplitude"], dtype=np.float32)),
        label_to_class=frozen(label_to_class),
        known_labels=frozen(known_labels),
        hu_thresholds=frozen(np.asarray(thresholds, dtype=np.float32)),
        hu_classes=frozen(np.asarray(hu_classes, dtype=np.uint8)),
        sources=sources,
        path=path,
    )
