"""Adversarial datasets on disk: attack a whole dataset, save the result, load it back.

`export` attacks every sample of a map-style dataset and writes the
adversarial examples as [safetensors](https://github.com/huggingface/safetensors)
shards plus a JSON manifest; `AdversarialDataset` reads them back as a
``torch.utils.data.Dataset`` and `load` as whole tensors. Nothing is ever
unpickled: shards are safetensors files and the manifest is JSON.

A directory written by `export` holds:

```text
manifest.json             format version, configuration, one entry per shard
shard-00000.safetensors   samples [0, shard_size)
shard-00001.safetensors   samples [shard_size, 2 * shard_size)
...
```

Shard ``s`` always holds the dataset indices ``[s * shard_size, (s + 1) * shard_size)``
(the last one fewer), whatever the batch size or the number of processes, and
holds the tensors ``x_adv`` (the stored examples), ``index`` (their indices in
the clean dataset), ``label`` (true labels), ``target`` (target classes, ``-1``
for an untargeted attack), ``success`` and ``distance`` (of what is stored).

Every random draw of sample ``i`` depends only on ``(seed, i)`` (the attack is
called with ``sample_ids=``, see `advkit.functional.KeyedGenerator`), each
shard is written atomically, and a run killed at any point resumes from the
shards already on disk: the result is the same as an uninterrupted run's.
Under ``torchrun`` every rank attacks its own shards.

This package needs the ``safetensors`` package (``pip install "advkit[io]"``).
Its modules, one job each: ``_hashing`` (checksums and fingerprints),
``_shards`` (shard files and their header checks), ``_manifest``,
``_export`` (export, distributed included) and ``_dataset`` (loading); the
uint8 kernels are `advkit._quantize`, the data path `advkit._data`.
"""

# LEVELS, FORMAT, MANIFEST and the uint8 kernels under their former private names
# (_levels, _quantize) stay importable from advkit.io, where they lived before.
from advkit._quantize import LEVELS  # noqa: F401
from advkit._quantize import levels as _levels  # noqa: F401
from advkit.io._dataset import AdversarialDataset, load
from advkit.io._errors import CorruptDatasetError, DatasetError, ManifestMismatchError
from advkit.io._export import ExportReport, Storage, export
from advkit.io._export import quantize_stored as _quantize  # noqa: F401
from advkit.io._manifest import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest  # noqa: F401

__all__ = [
    "FORMAT_VERSION",
    "AdversarialDataset",
    "CorruptDatasetError",
    "DatasetError",
    "ExportReport",
    "ManifestMismatchError",
    "Storage",
    "export",
    "load",
    "read_manifest",
]

# The public names read as advkit.io.NAME (in reprs, tracebacks and the docs).
for _obj in (
    AdversarialDataset,
    CorruptDatasetError,
    DatasetError,
    ExportReport,
    ManifestMismatchError,
    export,
    load,
    read_manifest,
):
    _obj.__module__ = __name__
del _obj
