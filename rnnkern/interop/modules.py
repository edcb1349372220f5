"""torch modules that ``to_torch`` builds; importing this module imports torch."""

from __future__ import annotations

from typing import Any

import torch


class Outputs(torch.nn.Module):
    """Runs a recurrent module and returns only its outputs, so that an ``nn.Sequential``
    can hold it (``to_torch`` of a Sequential; ``from_torch`` reads it back)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Any) -> Any:
        return self.module(x)[0]
