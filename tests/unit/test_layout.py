"""Guards on the repository layout that keep imports unambiguous."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dns_folder_does_not_shadow_dnspython() -> None:
    assert not list((ROOT / "dns").glob("*.py")), "dns/ is operator data; DNS code is gateway/"


def test_config_folder_is_data_only() -> None:
    assert not list((ROOT / "config").glob("*.py"))


def test_every_test_folder_is_a_package() -> None:
    folders = [p for p in (ROOT / "tests").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    missing = [str(p) for p in [ROOT / "tests", *folders] if not (p / "__init__.py").exists()]
    assert not missing, f"add __init__.py so pytest does not import these as top-level: {missing}"


def test_every_package_folder_is_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(project["packages"])
    folders = {
        ".".join(p.relative_to(ROOT).parts).replace("plugins", "gateway_plugins", 1)
        if p.relative_to(ROOT).parts[0] == "plugins"
        else ".".join(p.relative_to(ROOT).parts)
        for root in ("gateway", "plugins")
        for p in [ROOT / root, *(ROOT / root).rglob("*")]
        if p.is_dir() and any(p.glob("*.py"))
    }
    assert folders == listed, f"pyproject.toml [tool.setuptools] packages: {folders ^ listed}"


def test_builtin_plugins_import_as_gateway_plugins_from_the_plugins_folder() -> None:
    import gateway_plugins

    assert Path(gateway_plugins.__file__).parent == ROOT / "plugins"
    offenders = [
        str(path.relative_to(ROOT))
        for root in ("gateway", "plugins", "tests", "bench")
        for path in (ROOT / root).rglob("*.py")
        if re.search(r"^\s*(from|import) plugins\b", path.read_text(), re.MULTILINE)
    ]
    assert not offenders, f"import gateway_plugins, not plugins: {offenders}"


def test_the_wheel_installs_gateway_plugins_and_no_top_level_plugins(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for folder in ("gateway", "plugins"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("esp_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway_plugins/suppression.py" in names
    assert not [n for n in names if n.startswith("plugins/")]
