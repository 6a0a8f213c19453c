r"""Winning-ticket masks (``wgraph train --task ticket-mask``): from the initialization :math:`W_0`
of an MLP, predict which weights its lottery ticket keeps (the third task of Zhou et al.,
"Permutation Equivariant Neural Functionals", 2023). The labels are the masks :math:`M` that
iterative magnitude pruning with rewinding found for each initialization (a ticket zoo,
:mod:`wgraph.zoo.ticket`).

**Model** (:class:`ScoreModel`): a body with a per-parameter head
(:func:`~wgraph.tasks.models.parameter_body`: the graph NFN, NP / HNP, or the flat MLP) gives a
score :math:`s = \phi(W_0)` per parameter; an equivariant :math:`\phi` gives equivariant scores,
so a permutation of the initialization's neurons permutes the predicted mask with it.

**Loss**: binary cross-entropy of the scores of the weight matrices (biases are never pruned)
against the ticket's mask, averaged over the weights of a network.

**Metrics** (:class:`~wgraph.tasks.spec.TicketTask`): the predicted mask keeps the
:math:`\mathrm{round}(\kappa n)` highest-scoring entries of every weight matrix of :math:`n`
(:math:`\kappa` the zoo's ``keep``, the ticket's exact per-layer count). ``accuracy`` (the primary
metric) is the mean test accuracy of the networks trained from :math:`W_0` with that mask, by the
zoo's own recipe (:func:`~wgraph.zoo.ticket.train_masked`, the same minibatches for every network
and every mask); ``overlap`` is the fraction of the kept weights that the ticket also keeps. The
references, at the same per-layer counts and with the same training: ``ticket_accuracy`` (the IMP
ticket itself), ``magnitude_accuracy`` (the largest initial magnitudes) and ``random_accuracy`` (a
random mask), and ``magnitude_overlap``. They do not depend on the model and are computed once per
set of networks.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import WeightGraph

#: Reference metrics by set of networks (a digest of the targets), computed once per process.
_REFERENCES: dict[str, dict[str, float]] = {}


class ScoreModel(nn.Module):
    """``body`` (weights -> one value per parameter) as ``(B, P)`` scores, the parameters in the
    layout's order, flattened."""

    def __init__(self, body: nn.Module, layout):
        super().__init__()
        self.body = body
        self.names = [p.name for p in layout.params]

    def fit_normalization(self, graphs: WeightGraph) -> None:
        from .models import fit_normalization

        fit_normalization(self.body, graphs)

    def forward(self, graph: WeightGraph) -> torch.Tensor:
        from .inr_edit import parameter_values

        values = parameter_values(self.body(graph))
        return torch.cat([values[n].flatten(1) for n in self.names], 1)


def build_score_model(preset: str, layout) -> ScoreModel:
    from .models import parameter_body

    return ScoreModel(parameter_body(preset, layout, "ticket-mask")[0], layout)


def unflatten(x: torch.Tensor, params) -> dict[str, torch.Tensor]:
    """``(B, P)`` -> ``{name: (B, *shape)}`` for ``params`` ``((name, shape), ...)`` in order."""
    from ..zoo.cnn import unflatten as by_shapes

    return by_shapes(x, dict(params))


def weight_positions(params) -> torch.Tensor:
    """Boolean ``(P,)``: which flattened parameters belong to pruned weight matrices."""
    from ..zoo.ticket import is_pruned

    return torch.cat([torch.full((math.prod(s),), is_pruned(n, s)) for n, s in params])


def mask_loss(scores: torch.Tensor, masks: torch.Tensor, params) -> torch.Tensor:
    """Per network ``(B,)``: BCE of the weight matrices' scores against the mask."""
    at = weight_positions(params).to(scores.device)
    return F.binary_cross_entropy_with_logits(scores[:, at], masks[:, at].to(scores.dtype), reduction="none").mean(1)


def overlap(chosen: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per network: the fraction of the chosen weights (of every pruned matrix) that ``truth`` keeps."""
    from ..zoo.ticket import is_pruned

    names = [n for n, m in chosen.items() if is_pruned(n, m.shape[1:])]
    hit = sum((chosen[n] & truth[n]).flatten(1).sum(1) for n in names)
    return hit.double() / sum(chosen[n].flatten(1).sum(1) for n in names).double()


def retrained_accuracy(init: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], recipe: dict) -> torch.Tensor:
    """Test accuracy ``(N,)`` of the networks trained from ``init`` with ``masks`` (every network on
    the same minibatches, seed 0)."""
    from ..zoo.ticket import train_masked

    n = next(iter(init.values())).shape[0]
    init = {k: v.detach().float().cpu() for k, v in init.items()}
    masks = {k: v.cpu() for k, v in masks.items()}
    return train_masked(init, masks, recipe, [0] * n)[1].double()


def masks_and_inits(targets: torch.Tensor, params) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Targets ``(N, 2, P)`` as the tickets' masks and the initializations, ``{name: (N, *shape)}`` each."""
    return {k: v.bool() for k, v in unflatten(targets[:, 0], params).items()}, unflatten(targets[:, 1], params)


def references(targets: torch.Tensor, params, keep: float, recipe: dict) -> dict[str, float]:
    """The model-free metrics of targets ``(N, 2, P)`` (module docstring), cached by content."""
    from ..zoo.ticket import magnitude_masks, random_masks

    key = hashlib.sha256(targets.detach().cpu().double().numpy().tobytes()).hexdigest() + repr((keep, recipe))
    if key not in _REFERENCES:
        truth, init = masks_and_inits(targets, params)
        magnitude = magnitude_masks(init, keep)
        rand = random_masks(init, keep, [torch.Generator().manual_seed(i) for i in range(len(targets))])
        _REFERENCES[key] = {
            "ticket_accuracy": float(retrained_accuracy(init, truth, recipe).mean()),
            "magnitude_accuracy": float(retrained_accuracy(init, magnitude, recipe).mean()),
            "random_accuracy": float(retrained_accuracy(init, rand, recipe).mean()),
            "magnitude_overlap": float(overlap(magnitude, truth).mean()),
        }
    return _REFERENCES[key]


def ticket_metrics(scores: torch.Tensor, targets: torch.Tensor, params, keep: float, recipe: dict) -> dict:
    """``loss``, ``accuracy``, ``overlap`` and the references (module docstring)."""
    from ..zoo.ticket import top_masks

    scores, targets = scores.detach().double(), targets.to(scores.device).double()
    truth, init = masks_and_inits(targets, params)
    chosen = top_masks(unflatten(scores, params), keep)
    return {
        "loss": float(mask_loss(scores, targets[:, 0], params).mean()),
        "accuracy": float(retrained_accuracy(init, chosen, recipe).mean()),
        "overlap": float(overlap(chosen, truth).mean()),
        **references(targets, params, keep, recipe),
    }
