"""Training methods: the NPID memory bank and the Lightning module composing backbone, heads and losses."""

from .memory_bank import MemoryBank
from .module import ContrastiveModule

__all__ = ["ContrastiveModule", "MemoryBank"]
