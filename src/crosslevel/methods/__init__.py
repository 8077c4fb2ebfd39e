"""Training methods: the instance branches (NPID's memory bank, MoCo's momentum encoder and queue,
SimCLR's in-batch NT-Xent, BYOL's predictor and EMA target), each one :class:`InstanceBranch` in
one file, and the Lightning module composing backbone, heads, a branch and the CLD term."""

from .branch import InstanceBranch
from .byol import BYOLBranch
from .moco import KeyQueue, MoCoBranch, MomentumEncoder
from .module import ContrastiveModule
from .npid import MemoryBank, NPIDBranch
from .simclr import SimCLRBranch

__all__ = [
    "BYOLBranch",
    "ContrastiveModule",
    "InstanceBranch",
    "KeyQueue",
    "MemoryBank",
    "MoCoBranch",
    "MomentumEncoder",
    "NPIDBranch",
    "SimCLRBranch",
]
