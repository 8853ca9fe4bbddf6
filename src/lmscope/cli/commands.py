"""Every ``lmscope`` command, as the experiment class it runs (the CLI is generated from these)."""

from __future__ import annotations

from lmscope.circuits.experiments import Attribute, Circuit, Patch
from lmscope.experiments.basics import Harvest, Info
from lmscope.icl.experiments import ICLAlgebra, ICLRank1, ICLTrajectory, ICLVectors
from lmscope.introspection.experiments import Introspect
from lmscope.lenses.experiments import LogitLens, MultiHop, Patchscope, TunedLensCompare, TunedLensTrain
from lmscope.neurons.experiments import NeuronsAblate, NeuronsCorrelate, NeuronsRecord, NeuronsScale, NeuronsTop
from lmscope.relations.experiments import LRE
from lmscope.reproduce import Reproduce
from lmscope.saes.compare import SAECompare
from lmscope.saes.experiments import SAEDashboard, SAEEval, SAESteer, SAETrain
from lmscope.sparse.experiments import SparseBridge, SparsePrune, SparseTrain
from lmscope.steering.experiments import SteerApply, SteerExport, SteerExtract, SteerOrganism, SteerSweep

COMMANDS = (
    Info, Harvest,
    LogitLens, TunedLensTrain, TunedLensCompare, Patchscope, MultiHop,
    SteerExtract, SteerApply, SteerSweep, SteerExport, SteerOrganism,
    Introspect,
    ICLVectors, ICLAlgebra, ICLRank1, ICLTrajectory,
    NeuronsRecord, NeuronsTop, NeuronsCorrelate, NeuronsAblate, NeuronsScale,
    SAETrain, SAEEval, SAEDashboard, SAESteer, SAECompare,
    Patch, Attribute, Circuit,
    LRE,
    SparseTrain, SparsePrune, SparseBridge,
    Reproduce,
)  # fmt: skip
