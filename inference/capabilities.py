"""What this CPU can compute natively, for the choices between kernels (quant.py, lean.py)."""

from __future__ import annotations

from typing import Any

import torch


def cpu_has(*features: str) -> bool:
    """Whether this CPU has any of ``features``, as ``torch.cpu.get_capabilities()`` names them
    (e.g. ``avx512_vnni``); False on a torch without that function."""
    capabilities: dict[str, Any] = getattr(torch.cpu, "get_capabilities", dict)()
    return any(capabilities.get(feature) for feature in features)
