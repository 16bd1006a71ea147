"""Emergent Misalignment research toolkit."""

from em import quiet as _quiet

_quiet.install()  # before any stage imports Lightning, bitsandbytes or httpx (see em/quiet.py)
