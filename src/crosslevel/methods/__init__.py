"""Training methods: the instance branches (NPID's memory bank, MoCo's momentum encoder and queue),
each one :class:`InstanceBranch`, and the Lightning module composing backbone, heads, a branch and
the CLD term."""

from .branch import InstanceBranch
from .moco import KeyQueue, MoCoBranch, MomentumEncoder
from .module import ContrastiveModule
from .npid import MemoryBank, NPIDBranch

__all__ = ["ContrastiveModule", "InstanceBranch", "KeyQueue", "MemoryBank", "MoCoBranch", "MomentumEncoder", "NPIDBranch"]
