"""Training methods: the NPID memory bank, MoCo's momentum encoder and queue, and the Lightning module
composing backbone, heads, instance branch and CLD term."""

from .memory_bank import MemoryBank
from .moco import KeyQueue, MomentumEncoder
from .module import ContrastiveModule

__all__ = ["ContrastiveModule", "KeyQueue", "MemoryBank", "MomentumEncoder"]
