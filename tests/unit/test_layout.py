"""Guards on the repository layout that keep imports unambiguous."""

from __future__ import annotations

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
