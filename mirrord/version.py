"""The installed version of mirrord (mirrord --version, mirrorctl --version, mirrord_build_info)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version() -> str:
    """The package's version, or 'unknown' when run from a tree that was never installed."""
    try:
        return version("mirrord")
    except PackageNotFoundError:
        return "unknown"
