"""Emergent Misalignment research toolkit."""

from contextlib import suppress as _suppress

from em import quiet as _quiet

_quiet.install()  # before any stage imports Lightning, bitsandbytes or httpx (see em/quiet.py)

with _suppress(ImportError):  # an environment without Hydra (the Inspect export's) composes nothing
    from em import config as _config  # noqa: F401 (registers the config schema with Hydra's ConfigStore)
