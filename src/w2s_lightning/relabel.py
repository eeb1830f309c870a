"""Relabelling rules: a supervisor's soft labels mapped to new ones before a student learns
from them, from the labels alone or with a model's frozen features (a ``relabel`` stage).

A rule is called with a ``RelabelInputs`` and returns P(label = 1) per split it was given.
A row a filter drops holds NaN in ``train_b``: the student trains on the other rows
(``runner.StageRunner.kept``). Validation and test keep their labels under a filter, so
selection and the report read the supervisor's own labels there.

The probes and filters follow EleutherAI's w2s (``w2s/probe.py``, ``w2s/topo.py``); where
they differ, docs/methods.md says so. Settings come from ``method.rule`` (conf/method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components

from w2s_lightning.errors import ConfigError

TRAIN = "train_b"  # the rows a student learns from: what a rule relabels or filters


@dataclass
class RelabelInputs:
    """``labels``: the supervisor's P(label = 1) per split; ``features``: a frozen model's
    pooled features per split (rules that read them); ``others``: further supervisors'
    labels, split by split (an ensemble)."""

    labels: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor] | None = None
    others: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def needs_features(self, rule: str) -> dict[str, torch.Tensor]:
        if self.features is None:
            raise ConfigError(f"the rule {rule} reads a model's features: its request must name a model.")
        return {name: x.float() for name, x in self.features.items()}


class KnnProbe:
    """P(label = 1) as the mean label of the ``k`` nearest fitted rows (Euclidean). A fitted
    row is its own nearest neighbour, as in EleutherAI's ``KnnProbe``."""

    def __init__(self, k: int = 50):
        self.k = k

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> KnnProbe:
        self.x, self.y = x, y.float()
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x, self.x).topk(min(self.k, len(self.x)), largest=False).indices
        return self.y[nearest].mean(dim=1)


class LogisticProbe:
    """An L2-penalised logistic regression on standardised features, fitted by L-BFGS to
    soft labels (EleutherAI's ``LogisticProbe``, penalty ``l2``)."""

    def __init__(self, l2: float = 1e-3, max_iter: int = 200):
        self.l2, self.max_iter = l2, max_iter

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> LogisticProbe:
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        inputs = self._inputs(x)
        self.weight = torch.zeros(inputs.shape[1], dtype=inputs.dtype, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def loss():
            optimizer.zero_grad()
            value = torch.nn.functional.binary_cross_entropy_with_logits(inputs @ self.weight, y.to(inputs.dtype))
            value = value + self.l2 * self.weight[:-1].square().sum()
            value.backward()
            return value

        optimizer.step(loss)
        self.weight = self.weight.detach()
        return self

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - self.mean) / self.std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._inputs(x) @ self.weight)


def probe_relabel(inputs: RelabelInputs, probe: KnnProbe | LogisticProbe) -> dict[str, torch.Tensor]:
    """Every split's labels replaced by the predictions of ``probe`` fitted to the supervisor's
    labels of half B (EleutherAI's ``--probe_relabel``). Test's show how good the relabeller is."""
    features = inputs.needs_features("probe_relabel")
    probe.fit(features[TRAIN], inputs.labels[TRAIN])
    return {name: probe.predict(features[name]) for name in inputs.labels}


def probe_filter(
    inputs: RelabelInputs, probe: KnnProbe | LogisticProbe, contamination: float = 0.1
) -> dict[str, torch.Tensor]:
    """Half B without the ``contamination`` share of rows whose label the probe, fitted to
    half B, disagrees with most (EleutherAI's ``--probe_filter``)."""
    features = inputs.needs_features("probe_filter")
    labels = inputs.labels[TRAIN]
    disagreement = (probe.fit(features[TRAIN], labels).predict(features[TRAIN]) - labels.float()).abs()
    return dropping(inputs, disagreement.argsort(descending=True)[: _share(contamination, len(labels))])


def topo_filter(
    inputs: RelabelInputs, contamination: float = 0.1, k_cc: int = 20, k_zeta: int = 20
) -> dict[str, torch.Tensor]:
    """TopoFilter (EleutherAI's ``topofilter``): rows outside the largest connected component
    of their label class in the ``k_cc``-nearest-neighbour graph are dropped; then, of the
    rest, those furthest from the mean label of their ``k_zeta`` nearest neighbours, until the
    ``contamination`` share is gone (none more if the components already removed that many)."""
    x, labels = inputs.needs_features("topo_filter")[TRAIN], inputs.labels[TRAIN].float()
    component = _largest_components(x, labels > 0.5, k_cc)
    inside = component.nonzero().squeeze(1)
    neighbours = _nearest(x[inside], k_zeta)
    distance = (labels[inside] - labels[inside][neighbours].mean(dim=1)).abs()
    more = max(_share(contamination, len(labels)) - int((~component).sum()), 0)
    dropped = torch.cat([(~component).nonzero().squeeze(1), inside[distance.argsort(descending=True)[:more]]])
    return dropping(inputs, dropped)


def confidence_filter(inputs: RelabelInputs, keep: float = 0.5) -> dict[str, torch.Tensor]:
    """Half B cut to the ``keep`` share of rows whose label is most confident (|p - 0.5|)."""
    if not 0 < keep <= 1:
        raise ConfigError(f"method.rule.keep={keep}: give the share of half B to keep, in (0, 1].")
    labels = inputs.labels[TRAIN]
    confidence = (labels.float() - 0.5).abs()
    return dropping(inputs, confidence.argsort()[: len(labels) - math.ceil(keep * len(labels))])


def ensemble_mean(inputs: RelabelInputs) -> dict[str, torch.Tensor]:
    """The mean of the supervisor's and every other supervisor's soft labels, split by split."""
    everyone = [inputs.labels, *inputs.others]
    return {name: torch.stack([labels[name].float() for labels in everyone]).mean(dim=0) for name in inputs.labels}


# ------------------------------------------------------------------ parts


def dropping(inputs: RelabelInputs, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The supervisor's labels, with NaN at ``rows`` of half B (those a filter drops)."""
    labels = {name: p.float().clone() for name, p in inputs.labels.items()}
    labels[TRAIN][rows] = math.nan
    return labels


def _share(contamination: float, n: int) -> int:
    if not 0 <= contamination < 1:
        raise ConfigError(f"method.rule.contamination={contamination}: give the share of half B to drop, in [0, 1).")
    return int(contamination * n)


def _nearest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's ``k`` nearest other rows (Euclidean)."""
    distances = torch.cdist(x, x).fill_diagonal_(math.inf)
    return distances.topk(min(k, len(x) - 1), largest=False).indices


def _largest_components(x: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Rows in the largest strongly connected component of their own class in the directed
    kNN graph (an edge from each row to its ``k`` nearest)."""
    neighbours = _nearest(x, k)
    adjacency = torch.zeros(len(x), len(x), dtype=torch.bool)
    adjacency.scatter_(1, neighbours, True)
    keep = torch.zeros(len(x), dtype=torch.bool)
    for members in (positive, ~positive):
        same_class = adjacency & members[:, None] & members[None, :]
        _, component = connected_components(same_class.numpy(), connection="strong")
        sizes = np.bincount(component[members.numpy()], minlength=component.max() + 1)
        if members.any():
            keep |= torch.from_numpy(component == sizes.argmax()) & members
    return keep
