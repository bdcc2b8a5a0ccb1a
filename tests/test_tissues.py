"""Tests for the tissue table (assets/tissues.yaml, sonogym/anatomy/tissues.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from sonogym.anatomy.labels import LABEL_IDS, TOTALSEG_V2
from sonogym.anatomy.tissues import PROPERTIES, TissueTable
from sonogym.paths import asset_path
from sonogym.errors import DataError

REPO_TABLE = Path(__file__).resolve().parents[1] / "assets" / "tissues.yaml"


@pytest.fixture(scope="module")
def table() -> TissueTable:
    return TissueTable.load()


def class_name(table: TissueTable, label: str) -> str:
    return table.names[int(table.label_to_class[LABEL_IDS[label]])]


# --- the shipped table -----------------------------------------------------------------------


def test_default_table_is_the_repository_asset(table: TissueTable) -> None:
    assert asset_path("tissues.yaml") == REPO_TABLE
    assert Path(table.path) == REPO_TABLE
    required = {"air", "lung", "fat", "muscle", "soft_tissue", "liver", "kidney", "blood", "bone",
                "cartilage", "spinal_cord"}
    assert required <= set(table.names)
    n = len(table.names)
    for array in (table.speed_of_sound_m_s, table.density_kg_m3, table.impedance_mrayl,
                  table.attenuation_db_cm_mhz, table.scatterer_density, table.scatter_amplitude):
        assert array.dtype == np.float32 and array.shape == (n,)
        assert not array.flags.writeable
    assert table.label_to_class.dtype == np.uint8 and table.label_to_class.shape == (256,)
    assert table.hu_classes.dtype == np.uint8
    assert table.hu_thresholds.dtype == np.float32
    assert table.hu_classes.shape == (table.hu_thresholds.size + 1,)


def test_asset_path_reports_missing_asset() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_asset.yaml"):
        asset_path("no_such_asset.yaml")


def test_impedance_is_c_times_rho(table: TissueTable) -> None:
    expected = table.speed_of_sound_m_s.astype(np.float64) * table.density_kg_m3 / 1e6
    np.testing.assert_allclose(table.impedance_mrayl, expected, rtol=0.02)


def test_physical_values_are_plausible(table: TissueTable) -> None:
    c = dict(zip(table.names, table.speed_of_sound_m_s.tolist()))
    z = dict(zip(table.names, table.impedance_mrayl.tolist()))
    att = dict(zip(table.names, table.attenuation_db_cm_mhz.tolist()))
    amp = dict(zip(table.names, table.scatter_amplitude.tolist()))
    for name in ("fat", "muscle", "soft_tissue", "liver", "kidney", "blood"):
        assert 1400 <= c[name] <= 1650, name
        assert 1.2 <= z[name] <= 1.8, name
    assert c["bone"] > 3000 and z["bone"] > 5
    assert z["air"] < 0.001
    assert att["lung"] > att["bone"] > att["muscle"] > att["blood"]
    assert amp["air"] == 0 and amp["blood"] < 0.05 and amp["fat"] < amp["liver"]
    assert amp["cartilage"] < amp["muscle"] < amp["bone"]
    assert np.all((table.scatterer_density >= 0) & (table.scatterer_density <= 1))
    assert np.all((table.scatter_amplitude >= 0) & (table.scatter_amplitude <= 1))


def test_every_value_has_a_source(table: TissueTable) -> None:
    for name in table.names:
        for key in ("speed_of_sound", "density", "attenuation", "scatter"):
            assert table.sources[f"{name}.{key}"].strip(), f"{name}.{key}"
    assert "Duck" in table.sources["reference.Duck1990"]


def test_every_totalsegmentator_id_is_mapped(table: TissueTable) -> None:
    assert set(TOTALSEG_V2) == set(range(1, 118))
    assert table.known_labels[np.arange(0, 118)].all()
    assert not table.known_labels[118:].any()
    assert table.check_labels(range(0, 118)) == []


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("vertebrae_L4", "bone"),
        ("vertebrae_C1", "bone"),
        ("sacrum", "bone"),
        ("rib_left_1", "bone"),
        ("rib_right_12", "bone"),
        ("sternum", "bone"),
        ("skull", "bone"),
        ("hip_left", "bone"),
        ("liver", "liver"),
        ("spleen", "spleen"),
        ("kidney_left", "kidney"),
        ("aorta", "blood"),
        ("inferior_vena_cava", "blood"),
        ("heart", "blood"),
        ("lung_upper_lobe_left", "lung"),
        ("lung_middle_lobe_right", "lung"),
        ("lung_lower_lobe_right", "lung"),
        ("autochthon_left", "muscle"),
        ("autochthon_right", "muscle"),
        ("iliopsoas_right", "muscle"),
        ("gluteus_maximus_left", "muscle"),
        ("costal_cartilages", "cartilage"),
        ("spinal_cord", "spinal_cord"),
        ("kidney_cyst_left", "fluid"),
        ("urinary_bladder", "fluid"),
        ("trachea", "air"),
        ("colon", "soft_tissue"),
        ("brain", "brain"),
    ],
)
def test_known_labels_map_to_expected_class(table: TissueTable, label: str, expected: str) -> None:
    assert class_name(table, label) == expected


def test_all_vertebrae_and_ribs_are_bone(table: TissueTable) -> None:
    bone = table.class_id("bone")
    ids = [i for i, n in TOTALSEG_V2.items() if n.startswith(("vertebrae_", "rib_"))]
    assert len(ids) == 25 + 24
    assert (table.label_to_class[ids] == bone).all()


def test_class_id(table: TissueTable) -> None:
    assert table.names[table.class_id("liver")] == "liver"
    assert table.class_id("air") == 0
    with pytest.raises(KeyError, match="unknown tissue class 'marrow'"):
        table.class_id("marrow")


# --- classification --------------------------------------------------------------------------


def test_label_zero_is_classified_by_hu(table: TissueTable) -> None:
    hu = np.array([-1000, -3024, -500, -300, -100, -50, 0, 40, 100, 199, 200, 1200, np.nan], np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    got = [table.names[i] for i in table.classify(labels, hu)]
    assert got == ["air", "air", "air", "fat", "fat", "fat", "soft_tissue", "soft_tissue",
                   "soft_tissue", "soft_tissue", "bone", "bone", "air"]


def test_hu_bin_edges_are_lower_inclusive(table: TissueTable) -> None:
    edges = table.hu_thresholds
    labels = np.zeros(edges.size * 2, np.uint8)
    hu = np.concatenate([edges, np.nextafter(edges, np.float32(-np.inf))]).astype(np.float32)
    got = table.classify(labels, hu)
    np.testing.assert_array_equal(got[: edges.size], table.hu_classes[1:])
    np.testing.assert_array_equal(got[edges.size:], table.hu_classes[:-1])


def test_labels_override_hu(table: TissueTable) -> None:
    labels = np.array([[LABEL_IDS["vertebrae_L4"], LABEL_IDS["liver"]],
                       [LABEL_IDS["aorta"], 0]], np.uint8)
    hu = np.full(labels.shape, -1000.0, np.float32)  # air HU everywhere: labels must win
    got = table.classify(labels, hu)
    assert got.dtype == np.uint8 and got.shape == labels.shape
    assert [table.names[i] for i in got.ravel()] == ["bone", "liver", "blood", "air"]


def test_classify_3d_volume_and_int16_input(table: TissueTable) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 118, size=(8, 9, 10)).astype(np.int16)
    hu = rng.uniform(-1100, 1500, size=labels.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all ids are known: no warning
        got = table.classify(labels, hu)
    assert got.shape == labels.shape and got.dtype == np.uint8
    labelled = labels > 0
    np.testing.assert_array_equal(got[labelled], table.label_to_class[labels[labelled]])
    bins = np.searchsorted(table.hu_thresholds, hu[~labelled], side="right")
    np.testing.assert_array_equal(got[~labelled], table.hu_classes[bins])
    np.testing.assert_array_equal(table.classify(labels.astype(np.uint8), hu), got)


def test_unknown_ids_are_soft_tissue_with_one_warning(table: TissueTable) -> None:
    labels = np.array([0, 5, 118, 200, 118, 200, 28], np.uint8)
    hu = np.zeros(labels.shape, np.float32)
    with pytest.warns(UserWarning, match=r"\[118, 200\].*soft_tissue") as record:
        got = table.classify(labels, hu)
    assert len(record) == 1
    soft = table.class_id("soft_tissue")
    assert got[2] == got[3] == got[4] == got[5] == soft
    assert table.names[got[1]] == "liver" and table.names[got[6]] == "bone"


def test_out_of_range_ids_are_unknown(table: TissueTable) -> None:
    labels = np.array([-1, 300, 28], np.int32)
    with pytest.warns(UserWarning, match=r"\[-1, 300\]") as record:
        got = table.classify(labels, np.zeros(3, np.float32))
    assert len(record) == 1
    assert got.tolist() == [table.class_id("soft_tissue")] * 2 + [table.class_id("bone")]


def test_check_labels_returns_unknown_ids(table: TissueTable) -> None:
    with pytest.warns(UserWarning) as record:
        unknown = table.check_labels([0, 1, 117, 250, 118, 118])
    assert unknown == [118, 250]
    assert len(record) == 1 and "[118, 250]" in str(record[0].message)


def test_classify_rejects_mismatched_input(table: TissueTable) -> None:
    with pytest.raises(ValueError, match="shape"):
        table.classify(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="integer"):
        table.classify(np.zeros(3, np.float32), np.zeros(3, np.float32))


# --- validation of bad files ----------------------------------------------------------------


def shipped_data() -> dict:
    return yaml.safe_load(REPO_TABLE.read_text(encoding="utf-8"))


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad_tissues.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_copy_of_shipped_table_loads(tmp_path: Path) -> None:
    path = write(tmp_path, shipped_data())
    loaded = TissueTable.load(path)
    default = TissueTable.load()
    assert loaded.names == default.names
    np.testing.assert_array_equal(loaded.label_to_class, default.label_to_class)
    assert Path(loaded.path) == path


def test_missing_property(tmp_path: Path) -> None:
    data = shipped_data()
    del data["classes"]["liver"]["attenuation"]
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*'liver' is missing property 'attenuation'"):
        TissueTable.load(path)


@pytest.mark.parametrize("prop", ["speed_of_sound", "density"])
@pytest.mark.parametrize("value", [0.0, -1540.0])
def test_non_positive_speed_or_density(tmp_path: Path, prop: str, value: float) -> None:
    data = shipped_data()
    data["classes"]["fat"][prop] = value
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=rf"bad_tissues\.yaml.*'fat': {prop} must be positive"):
        TissueTable.load(path)


def test_inconsistent_impedance(tmp_path: Path) -> None:
    data = shipped_data()
    data["classes"]["muscle"]["impedance"] = 1.9  # c*rho = 1.731
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*'muscle': impedance 1.9 MRayl is inconsistent"):
        TissueTable.load(path)


def test_impedance_within_tolerance_is_accepted(tmp_path: Path) -> None:
    data = shipped_data()
    data["classes"]["muscle"]["impedance"] = 1.731 * 1.015
    loaded = TissueTable.load(write(tmp_path, data))
    assert loaded.impedance_mrayl[loaded.class_id("muscle")] == pytest.approx(1.731 * 1.015, rel=1e-6)


def test_non_numeric_property(tmp_path: Path) -> None:
    data = shipped_data()
    data["classes"]["blood"]["density"] = "1050 kg/m3"
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*'blood': density must be a finite number"):
        TissueTable.load(write(tmp_path, data))


def test_mapping_to_unknown_class(tmp_path: Path) -> None:
    data = shipped_data()
    data["label_to_class"][28] = "bones"
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*label 28 maps to unknown class 'bones'"):
        TissueTable.load(write(tmp_path, data))


def test_hu_rule_to_unknown_class(tmp_path: Path) -> None:
    data = shipped_data()
    data["hu_rules"][0]["class"] = "vacuum"
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*hu_rules\[0\] maps to unknown class 'vacuum'"):
        TissueTable.load(write(tmp_path, data))


def test_duplicate_label_id(tmp_path: Path) -> None:
    text = REPO_TABLE.read_text(encoding="utf-8")
    text = text.replace("  28: bone ", "  28: bone\n  28: liver\n  #", 1)
    path = tmp_path / "dup_tissues.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"dup_tissues\.yaml: line \d+: duplicate key 28"):
        TissueTable.load(path)


def test_duplicate_class(tmp_path: Path) -> None:
    text = REPO_TABLE.read_text(encoding="utf-8")
    block = text[text.index("  fat:\n"):text.index("  soft_tissue:")]
    text = text.replace("  soft_tissue:", block + "  soft_tissue:", 1)
    path = tmp_path / "dup_class.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"dup_class\.yaml: line \d+: duplicate key 'fat'"):
        TissueTable.load(path)


def test_label_id_out_of_range(tmp_path: Path) -> None:
    for bad in (0, 256):
        data = shipped_data()
        data["label_to_class"][bad] = "bone"
        with pytest.raises(DataError, match=rf"bad_tissues\.yaml.*key {bad} is not a label id in 1\.\.255"):
            TissueTable.load(write(tmp_path, data))


def test_hu_thresholds_not_increasing(tmp_path: Path) -> None:
    data = shipped_data()
    data["hu_rules"][2]["below"] = -400  # equal to rule 0, below rule 1
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*strictly increasing.*hu_rules\[2\]"):
        TissueTable.load(write(tmp_path, data))


def test_hu_rules_last_rule_must_be_open(tmp_path: Path) -> None:
    data = shipped_data()
    data["hu_rules"][-1]["below"] = 5000
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*last rule.*must not have 'below'"):
        TissueTable.load(write(tmp_path, data))
    data = shipped_data()
    del data["hu_rules"][1]["below"]
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*hu_rules\[1\] needs a numeric 'below'"):
        TissueTable.load(write(tmp_path, data))


def test_missing_soft_tissue_class(tmp_path: Path) -> None:
    data = shipped_data()
    data["classes"]["generic"] = data["classes"].pop("soft_tissue")
    data["label_to_class"] = {k: ("generic" if v == "soft_tissue" else v) for k, v in data["label_to_class"].items()}
    data["hu_rules"][3]["class"] = "generic"
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*no class 'soft_tissue'"):
        TissueTable.load(write(tmp_path, data))


def test_missing_source(tmp_path: Path) -> None:
    data = shipped_data()
    del data["classes"]["kidney"]["sources"]["attenuation"]
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*'kidney' has no source for 'attenuation'"):
        TissueTable.load(write(tmp_path, data))


def test_unknown_property_key(tmp_path: Path) -> None:
    data = shipped_data()
    data["classes"]["bone"]["speed_of_soud"] = 3500.0
    with pytest.raises(DataError, match=r"bad_tissues\.yaml.*'bone' has unknown keys \['speed_of_soud'\]"):
        TissueTable.load(write(tmp_path, data))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("classes: [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.yaml: not valid YAML"):
        TissueTable.load(path)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        TissueTable.load(tmp_path / "nowhere.yaml")


def test_all_properties_are_required(tmp_path: Path) -> None:
    for prop in PROPERTIES:
        data = shipped_data()
        del data["classes"]["air"][prop]
        with pytest.raises(DataError, match=rf"bad_tissues\.yaml.*'air' is missing property '{prop}'"):
            TissueTable.load(write(tmp_path, data))
