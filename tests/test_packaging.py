"""The wheel must contain every package: three of them live outside fusionrec/ and are listed by hand."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"fusionrec": "fusionrec", "fusionrec.train": "train", "fusionrec.serving": "serving",
          "fusionrec.operator": "operator"}


def _declared() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPED
    return set(config["packages"])


def _on_disk() -> set[str]:
    found = set()
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_is_declared():
    missing = _on_disk() - _declared()
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_mapped_packages_import_as_fusionrec_and_stdlib_operator_is_untouched():
    import operator

    import fusionrec.operator

    assert Path(fusionrec.operator.__file__).parent == ROOT / "operator"
    assert hasattr(operator, "itemgetter"), "the stdlib operator module must not be shadowed"
