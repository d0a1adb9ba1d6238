"""The proposal stage: the RPN (head, anchors, target assignment, proposal generation) and
the FPN segment proposals that can take its place."""

from kmask.modeling.proposals.anchor_generator import AnchorGenerator
from kmask.modeling.proposals.proposal_generator import ProposalGenerator
from kmask.modeling.proposals.rpn import RPN
from kmask.modeling.proposals.rpn_head import RPNHead
from kmask.modeling.proposals.rpn_target_assigner import RPNTargetAssigner
from kmask.modeling.proposals.segment_proposals import SegmentProposals

__all__ = [
    "RPN",
    "AnchorGenerator",
    "ProposalGenerator",
    "RPNHead",
    "RPNTargetAssigner",
    "SegmentProposals",
]
