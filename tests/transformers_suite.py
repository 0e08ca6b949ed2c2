"""transformers' own common model tests, taken from the installed version's source distribution at test time.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester` (tests/test_configuration_common.py) are what
a transformers maintainer runs before accepting a model. They are not in the wheel, so pip downloads the sdist of
exactly the installed transformers version from the package registry (never committed; cached under the pytest
cache folder), and its tests/ folder is imported as the package `transformers_tests`.

The sdist lacks three modules those files import; they are stood in for here, each with what the suite needs of it:
- generation/test_utils.py: only the `GenerationTesterMixin` class, for an `issubclass` check (the generation tests
  themselves are not in the sdist; tests/test_generation_common.py covers what they check);
- exporters/test_export.py: `ExportTesterMixin`, the torch.export tests' base class (not in the sdist: not run);
- utils/test_configuration_utils.py: `config_common_kwargs`, which `ConfigTester` reads only for non-composite
  configs (ours is composite: never read).
"""

import importlib
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

PACKAGE = "transformers_tests"
_SUITE_FILES = ("test_modeling_common.py", "test_configuration_common.py")
_STAND_INS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def _download_sdist(folder: Path) -> Path:
    version = transformers.__version__
    name = f"transformers-{version}.tar.gz"
    if not (folder / name).exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--dest", str(folder), f"transformers=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode or not (folder / name).exists():
            raise RuntimeError(
                f"could not download transformers {version}'s source distribution (needed for its common model "
                f"tests) with `{' '.join(command)}`:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    return folder / name


def load(cache_dir) -> tuple:
    """Download (once) and import the suite -> (ModelTesterMixin, ConfigTester, the sdist's testing module)."""
    root = Path(cache_dir) / f"transformers-{transformers.__version__}"
    package = root / PACKAGE
    if not all((package / name).exists() for name in _SUITE_FILES):
        root.mkdir(parents=True, exist_ok=True)
        sdist = _download_sdist(root)
        prefix = f"transformers-{transformers.__version__}/tests/"
        with tarfile.open(sdist) as archive:
            for name in _SUITE_FILES:
                member = archive.getmember(prefix + name)
                (package / name).parent.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(archive.extractfile(member).read())
        for name, text in {"__init__.py": "", **_STAND_INS}.items():
            path = package / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            for parent in path.relative_to(package).parents:
                (package / parent / "__init__.py").touch()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling.ModelTesterMixin, configuration.ConfigTester, modeling
