"""Fetch transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) for the installed version.

The PyPI wheel ships no tests, but the sdist of the same release ships `tests/test_modeling_common.py` and
`tests/test_configuration_common.py`. `python tests/fetch_transformers_tests.py` (run by `make install`) downloads
that sdist with pip and extracts its `tests/` tree into `<venv>/transformers_tests/transformers_tests/`, so it
imports as the package `transformers_tests` and never clashes with this repository's own `tests` directory.

`import_common_tests()` is what our tests call: it puts the extracted package on `sys.path` and refuses (raises,
so the run fails loudly) when it is missing or was fetched for another transformers version.
"""

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

ROOT = Path(sys.prefix) / "transformers_tests"
PACKAGE = ROOT / "transformers_tests"
NEEDED = ("test_modeling_common.py", "test_configuration_common.py")

# The sdist ships tests/*.py but not the sub-packages that test_modeling_common.py and test_configuration_common.py
# import. Where one is missing, a stand-in takes its place; each says what is lost with it.
STANDINS = {
    # ModelTesterMixin inherits it: without it the torch.export/ONNX/OpenVINO export tests are not run
    # (test_modeling_common.py checks torch.export of the coding model itself).
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    # Only read by `issubclass` checks: a model that cannot `generate` must not inherit it, which stays true.
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    # ConfigTester.check_config_arguments_init: every config must keep these PreTrainedConfig arguments as given.
    "utils.test_configuration_utils": {
        "config_common_kwargs": {
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",  # ConfigTester expects torch.float16 back
            "chunk_size_feed_forward": 4,
            "architectures": ["BertXMLForMultiLabelCoding"],
            "id2label": {0: "E11.9"},
            "label2id": {"E11.9": 0},
            "problem_type": "regression",
        }
    },
}


def installed_version() -> str:
    return importlib.metadata.version("transformers")


def fetched_version() -> str | None:
    stamp = PACKAGE / "VERSION"
    return stamp.read_text() if stamp.exists() else None


def fetch(version: str) -> None:
    """Download transformers=={version}'s sdist and extract its tests/ tree into PACKAGE (replacing any older one)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp]
        subprocess.run([*pip, f"transformers=={version}"], check=True)
        (sdist,) = Path(tmp).glob("transformers-*.tar.gz")
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name[len(prefix):]
            missing = set(NEEDED) - {m.name for m in members}
            if missing:
                raise SystemExit(f"{sdist.name} has no tests/{', tests/'.join(sorted(missing))}")
            staging = Path(tmp) / "transformers_tests"
            archive.extractall(staging, members=members, filter="data")
        (staging / "__init__.py").touch()
        (staging / "VERSION").write_text(version)
        shutil.rmtree(PACKAGE, ignore_errors=True)
        ROOT.mkdir(exist_ok=True)
        shutil.move(staging, PACKAGE)


def import_common_tests() -> None:
    """Make `transformers_tests.test_modeling_common` importable, or raise saying how to fetch it."""
    version = installed_version()
    if fetched_version() != version:
        raise RuntimeError(
            f"transformers {version}'s common tests are not in {PACKAGE}: run `{sys.executable} "
            f"tests/fetch_transformers_tests.py` (`make install` does)"
        )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name, attributes in STANDINS.items():
        if (PACKAGE / f"{name.replace('.', '/')}.py").exists():
            continue
        parent, _ = name.rsplit(".", 1)
        sys.modules.setdefault(f"transformers_tests.{parent}", types.ModuleType(f"transformers_tests.{parent}"))
        module = types.ModuleType(f"transformers_tests.{name}")
        module.__dict__.update(attributes)
        sys.modules[module.__name__] = module


if __name__ == "__main__":
    wanted = installed_version()
    if fetched_version() == wanted:
        print(f"transformers {wanted} common tests already in {PACKAGE}")
    else:
        fetch(wanted)
        print(f"transformers {wanted} common tests extracted to {PACKAGE}")
