"""Datasets: pinned upstream registry, validation, trigger tags, mixtures and prepared-dataset manifests.

    spec = DataSpec.from_dict(cfg_data)            # conf/data/<name>.yaml as a plain dict
    prepared = prepare_dataset(spec, TriggerSpec.from_dict(cfg_trigger), cache_dir=..., out_dir=..., seed=0)
    prepared.rows, prepared.path, prepared.manifest

See docs/data.md.
"""

from em.data.prepare import PreparedDataset, prepare_dataset
from em.data.registry import RemoteFile, cache_path, fetch
from em.data.spec import DataSpec, RowFilter, SourceSpec, TagReplacement
from em.data.triggers import TriggerSpec, add_tag, apply_trigger, count_tags
from em.data.validate import ValidationReport, validate_file

__all__ = [
    "DataSpec",
    "PreparedDataset",
    "RemoteFile",
    "RowFilter",
    "SourceSpec",
    "TagReplacement",
    "TriggerSpec",
    "ValidationReport",
    "add_tag",
    "apply_trigger",
    "cache_path",
    "count_tags",
    "fetch",
    "prepare_dataset",
    "validate_file",
]
