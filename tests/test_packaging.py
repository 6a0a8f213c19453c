"""A built wheel carries what the package reads at run time: the presets and the native kernels' source."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    (path,) = out.glob("wgraph-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_presets_and_kernel_source(wheel):
    names = set(wheel.namelist())
    presets = {p.name for p in (ROOT / "wgraph" / "models").glob("*.toml")}
    assert {"gnn.toml", "np.toml", "statnn.toml"} <= presets
    assert {f"wgraph/models/{p}" for p in presets} <= names
    assert "wgraph/kernels/native.c" in names
    assert wheel.read("wgraph/kernels/native.c") == (ROOT / "wgraph" / "kernels" / "native.c").read_bytes()
