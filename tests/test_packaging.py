"""The wheel a user installs with `pip install .` (not the editable checkout): it carries its templates and console
scripts, and `bert-xml-train` trains and writes the model card from a directory that is not the repository."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SUBPROCESS_TIMEOUT_S
from tests.test_train import data, train_args  # noqa: F401 (fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPTS = ["bert-xml-tokenizer", "bert-xml-pretrain", "bert-xml-train", "bert-xml-predict", "bert-xml-push"]


def fresh_env(folder: Path) -> Path:
    """A venv that sees this environment's installed dependencies but not its (editable) bert-xml nor the checkout.

    A plain path line in a `.pth` file adds the dependencies' folder after the venv's own site-packages, without
    running the `.pth` files in it (which hold the editable install's import hook).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (own,) = Path(folder, "lib").glob("python3*/site-packages")
    (own / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return folder / "bin"


@pytest.mark.integration
def test_wheel_trains_through_its_console_script_outside_the_repository(data: Path, tmp_path: Path) -> None:
    wheels, elsewhere, source = tmp_path / "wheels", tmp_path / "elsewhere", tmp_path / "source"
    elsewhere.mkdir()
    # A clean copy: setuptools would reuse a stale build/ of the checkout (files the package data no longer lists).
    # The checkout's runs/ and data/ (generated corpora) stay behind; the package's own data/ folder is code.
    generated = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")

    def unpackaged(folder: str, names: list[str]) -> set[str]:
        return generated(folder, names) | ({"runs", "data"} & set(names) if Path(folder) == REPO_ROOT else set())

    shutil.copytree(REPO_ROOT, source, ignore=unpackaged)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("bert_xml-*.whl")
    # The console scripts run the package's code: no top-level `train` or `pretrain` module (another project's
    # train.py would collide with it), and the model card template ships as package data.
    files = zipfile.ZipFile(wheel).namelist()
    assert not {"train.py", "pretrain.py"} & set(files)
    assert "modeling_bertxml/release/templates/model_card.md" in files
    bin_dir = fresh_env(tmp_path / "venv")
    subprocess.run([*pip, "--python", str(bin_dir / "python"), "install", "--no-deps", str(wheel)], check=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
        )

    where = run(str(bin_dir / "python"), "-c", "import modeling_bertxml; print(modeling_bertxml.__file__)")
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr  # the wheel's, not the repo's
    assert all((bin_dir / name).is_file() for name in CONSOLE_SCRIPTS)

    output_dir = elsewhere / "coder"
    out = run(str(bin_dir / "bert-xml-train"), *train_args(data, output_dir, "--max_train_steps", "2"))

    assert out.returncode == 0, out.stderr[-3000:]
    card = (output_dir / "README.md").read_text()
    assert card.startswith("---\n") and "bert-xml" in card and "micro_f1" in card.lower().replace(" ", "_")
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "handler.py").is_file()
    assert run(str(bin_dir / "bert-xml-push"), "--help").returncode == 0
