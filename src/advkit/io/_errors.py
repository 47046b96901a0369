"""The error types of adversarial datasets on disk."""

from __future__ import annotations

from advkit.checks import AdvkitError

__all__ = ["CorruptDatasetError", "DatasetError", "ManifestMismatchError"]


class DatasetError(AdvkitError, ValueError):
    """An adversarial dataset on disk cannot be used (base class; also: an unfinished export)."""


class CorruptDatasetError(DatasetError):
    """A manifest or shard is unreadable, truncated or fails its checksum."""


class ManifestMismatchError(DatasetError):
    """The directory holds an export made with a different configuration (or one whose
    objective or target map cannot be shown to be the same, see `advkit.io.export`)."""
