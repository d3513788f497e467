"""The study files shipped with the package, found by name: ``demo``, ``kaf/fashion_mnist``.

    study_file("demo")                 # -> .../robustact/configs/demo.yaml
    study_file("configs/demo.yaml")    # an existing path is taken as it is
    shipped_studies()                  # ["demo", "kaf/cifar10_resnet20", ...]

The files live in ``robustact/configs`` inside the installed package (the repository's
``configs/`` points there), so ``robustact run demo`` works from any directory and from a
wheel, not only in a source checkout.
"""

from __future__ import annotations

from pathlib import Path

from robustact.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def shipped_studies() -> list[str]:
    """Names of the shipped study files (their path under ``configs/`` without ``.yaml``)."""
    return sorted(p.relative_to(SHIPPED).with_suffix("").as_posix()
                  for p in SHIPPED.rglob("*.yaml"))


def is_shipped(value: str | Path) -> bool:
    """Whether ``value`` names a shipped study (``demo``, ``configs/demo.yaml``)."""
    name = Path(value).as_posix().removeprefix("configs/").removesuffix(".yaml")
    return not Path(value).is_absolute() and (SHIPPED / f"{name}.yaml").is_file()


def study_file(value: str | Path) -> Path:
    """The study file ``value`` names: an existing file, or a shipped study by name (with or
    without ``.yaml``, with or without a leading ``configs/``)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if is_shipped(value):
        name = path.as_posix().removeprefix("configs/").removesuffix(".yaml")
        return SHIPPED / f"{name}.yaml"
    if path.exists():
        raise ConfigError(f"{path} is a directory; give a study YAML file or a shipped "
                          "study's name (robustact list studies)")
    raise ConfigError(f"no study file {str(value)!r}: not a file, nor a shipped study; shipped: "
                      f"{', '.join(shipped_studies())}")
