"""A tree-structured graphical model fitted to noisy marginals (Private-PGM's estimator, for MST's trees).

MST measures one-way marginals and the two-way marginals along a spanning tree. The noisy
measurements disagree with each other (two edges that share an attribute give it two different
marginals, counts can be negative); Private-PGM (McKenna, Sheldon, Miklau 2019) resolves this by
finding the distribution of a graphical model, here a pairwise Markov random field on the tree,
whose marginals best fit the measurements in weighted least squares:

    minimise  Σ_m ‖Q_m μ_m − y_m‖² / (2 σ_m)   over the model's marginals μ,

with mirror descent on the log-potentials and an Armijo line search, as the reference
implementation does. On a tree, belief propagation gives the exact marginals, so each step is
exact. Sampling is ancestral: the root from its marginal, every other attribute from its
conditional given its parent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp


@dataclass
class Measurement:
    """Noisy `y ≈ weights ⊙ μ_clique` (flattened, row-major), each entry with noise standard deviation `sigma`."""

    clique: tuple[int, ...]           # one attribute, or two (a < b)
    y: np.ndarray
    sigma: float
    weights: np.ndarray | None = None  # None: the identity query

    def query(self, mu: np.ndarray) -> np.ndarray:
        flat = mu.ravel()
        return flat if self.weights is None else flat * self.weights


@dataclass
class TreeModel:
    """p(x) ∝ exp(Σ_a θ_a(x_a) + Σ_(a,b) θ_ab(x_a, x_b)) over a forest of attributes, scaled to `total` records."""

    sizes: tuple[int, ...]
    edges: tuple[tuple[int, int], ...]
    total: float
    unary: list[np.ndarray] = field(default_factory=list)
    pairwise: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.edges = tuple(tuple(sorted(e)) for e in self.edges)  # type: ignore[assignment]
        if not self.unary:
            self.unary = [np.zeros(n) for n in self.sizes]
        for e in self.edges:
            self.pairwise.setdefault(e, np.zeros((self.sizes[e[0]], self.sizes[e[1]])))
        self._order = _forest_order(len(self.sizes), self.edges)

    def copy_with(self, unary: list[np.ndarray], pairwise: dict) -> TreeModel:
        return TreeModel(self.sizes, self.edges, self.total, unary, pairwise)

    def _edge_table(self, a: int, b: int) -> np.ndarray:
        """θ over (x_a, x_b) in that orientation."""
        return self.pairwise[(a, b)] if a < b else self.pairwise[(b, a)].T

    def marginals(self) -> tuple[list[np.ndarray], dict[tuple[int, int], np.ndarray]]:
        """Exact node and edge marginals (counts summing to `total`) by belief propagation on the forest."""
        nbrs: dict[int, list[int]] = defaultdict(list)
        for a, b in self.edges:
            nbrs[a].append(b)
            nbrs[b].append(a)
        msg: dict[tuple[int, int], np.ndarray] = {}        # (from, to) -> log message over x_to

        def incoming(a: int, skip: int | None) -> np.ndarray:
            out = self.unary[a].copy()
            for k in nbrs[a]:
                if k != skip:
                    out = out + msg[(k, a)]
            return out

        for node, parent in reversed(self._order):           # leaves up
            if parent is not None:
                msg[(node, parent)] = logsumexp(incoming(node, parent)[:, None] + self._edge_table(node, parent), axis=0)
        for node, parent in self._order:                      # root down
            for child in nbrs[node]:
                if child != parent:
                    msg[(node, child)] = logsumexp(incoming(node, child)[:, None] + self._edge_table(node, child), axis=0)
        nodes = []
        for a in range(len(self.sizes)):
            b = incoming(a, None)
            nodes.append(self.total * np.exp(b - logsumexp(b)))
        pair = {}
        for a, b in self.edges:
            t = incoming(a, b)[:, None] + incoming(b, a)[None, :] + self.pairwise[(a, b)]
            pair[(a, b)] = self.total * np.exp(t - logsumexp(t))
        return nodes, pair

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n rows of codes (n, d), drawn ancestrally along the forest."""
        nodes, pair = self.marginals()
        out = np.zeros((n, len(self.sizes)), dtype=np.int64)
        for node, parent in self._order:
            if parent is None:
                p = nodes[node] / nodes[node].sum()
                out[:, node] = rng.choice(len(p), size=n, p=p)
                continue
            joint = pair[(parent, node)] if parent < node else pair[(node, parent)].T    # (x_parent, x_node)
            cond = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)
            cum = np.cumsum(cond[out[:, parent]], axis=1)
            u = rng.random(n)[:, None] * cum[:, -1:]
            out[:, node] = np.minimum((u > cum).sum(axis=1), len(cond[0]) - 1)
        return out


def _forest_order(d: int, edges) -> list[tuple[int, int | None]]:
    """(node, parent) pairs in breadth-first order from each component's smallest attribute."""
    nbrs: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    seen, order = set(), []
    for root in range(d):
        if root in seen:
            continue
        seen.add(root)
        queue = [(root, None)]
        while queue:
            node, parent = queue.pop(0)
            order.append((node, parent))
            for k in sorted(nbrs[node]):
                if k not in seen:
                    seen.add(k)
                    queue.append((k, node))
    if len(order) != d or len(edges) != d - len([1 for _, p in order if p is None]):
        raise ValueError(f"edges {list(edges)} do not form a forest over {d} attributes")
    return order


def _loss_and_grad(model: TreeModel, measurements: list[Measurement]):
    nodes, pair = model.marginals()
    loss = 0.0
    g_unary = [np.zeros(n) for n in model.sizes]
    g_pair = {e: np.zeros_like(t) for e, t in pair.items()}
    for m in measurements:
        mu = nodes[m.clique[0]] if len(m.clique) == 1 else pair[m.clique]
        diff = m.query(mu) - m.y
        loss += float(diff @ diff) / (2 * m.sigma)
        g = diff / m.sigma if m.weights is None else diff * m.weights / m.sigma
        if len(m.clique) == 1:
            g_unary[m.clique[0]] += g
        else:
            g_pair[m.clique] += g.reshape(g_pair[m.clique].shape)
    return loss, (nodes, pair), (g_unary, g_pair)


def fit_tree_model(sizes: tuple[int, ...], edges, measurements: list[Measurement], total: float, iters: int = 1500) -> TreeModel:
    """Mirror descent with Armijo line search (Private-PGM's `mirror_descent`), from uniform potentials."""
    for m in measurements:
        if len(m.clique) == 2 and tuple(sorted(m.clique)) not in {tuple(sorted(e)) for e in edges}:
            raise ValueError(f"measurement on {m.clique} is not an edge of the tree {list(edges)}")
    model = TreeModel(tuple(sizes), tuple(edges), float(total))
    alpha = 2.0 / max(total, 1.0)
    loss, mu, grad = _loss_and_grad(model, measurements)
    for _ in range(iters):
        cand = model.copy_with([t - alpha * g for t, g in zip(model.unary, grad[0])],
                               {e: t - alpha * grad[1][e] for e, t in model.pairwise.items()})
        loss2, mu2, grad2 = _loss_and_grad(cand, measurements)
        decrease = sum(float(g @ (a - b)) for g, a, b in zip(grad[0], mu[0], mu2[0]))
        decrease += sum(float((grad[1][e] * (mu[1][e] - mu2[1][e])).sum()) for e in mu[1])
        if loss - loss2 >= 0.5 * alpha * decrease:
            model, loss, mu, grad = cand, loss2, mu2, grad2
            alpha *= 1.01
        else:
            alpha *= 0.5
    return model
