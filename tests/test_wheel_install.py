"""A regular (non-editable) install behaves like the source tree, from any working directory.

Issue 15 part 6: with the wheel installed, `python -m semiflow ...` run in the repository root
imported the source folder `semiflow/` (the working directory comes first on sys.path) and then
failed on `semiflow.detector`, which the wheel holds but the source folder does not. The test
builds the wheel, installs it into a fresh venv (no system site-packages; the dependencies are
reached through a .pth to this venv's site-packages, so no network is needed) and scores the
bundled lab sample with the bundled model from the repository root and from elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "semiflow" / "data" / "lab-sample" / "capture.pcap.gz"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": "",
       "SEMIFLOW_DEBUG": ""}


def _run(cmd: list[str], cwd: Path) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd} in {cwd}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _data_lines(log: Path) -> list[str]:
    return [x for x in log.read_text().splitlines() if not x.startswith("#")]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in place would leave build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("semiflow", "detector", "plugin", "training"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(tmp / "dist"), str(src)], tmp)
    wheel = next((tmp / "dist").glob("semiflow-*.whl"))
    env = tmp / "venv"
    venv.create(env, with_pip=False, system_site_packages=False)
    py = env / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
          "--no-index", str(wheel)], tmp)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # dependencies from this venv; a plain path line, so its editable-install hook stays off
    Path(purelib, "_semiflow_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def test_wheel_holds_the_mapped_subpackages(wheel_venv, tmp_path):
    out = _run([str(wheel_venv / "bin" / "python"), "-c",
                "import semiflow.detector.sample.spec, semiflow.plugin.zeeklog, "
                "semiflow.training.report, semiflow; print(semiflow.__file__)"], tmp_path)
    assert str(wheel_venv) in out  # the installed copy, not the checkout


@pytest.mark.slow
def test_installed_score_from_repository_root_and_elsewhere(wheel_venv, tmp_path):
    py, cli = wheel_venv / "bin" / "python", wheel_venv / "bin" / "semiflow"
    # the reported failure: `python -m semiflow` in the checkout imports the source folder
    _run([str(py), "-m", "semiflow", "score", str(SAMPLE), "-o", str(tmp_path / "root"), "-q"],
         ROOT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([str(cli), "score", str(SAMPLE), "-o", "out", "-q"], elsewhere)
    _run([str(py), "-m", "semiflow", "--version"], elsewhere)
    a = _data_lines(tmp_path / "root" / "semiflow.log")
    b = _data_lines(elsewhere / "out" / "semiflow.log")
    assert len(a) > 1000 and a == b
    assert any("\tanomalous\t" in x for x in a)
