"""Critics T(x, y): K independent MLPs on the concatenated pair, evaluated by batched products.

A critic is an MLP on ``concat(x, y)``. Its first layer is split as ``x @ W_x + y @ W_y`` (the same
function), so the x and y embeddings are computed once per batch and re-paired for marginal samples
at no extra cost. K critics with stacked parameters of shape (K, ...) train in one pass: K = 1 for a
single estimate, K > 1 for several seeds at once.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["MLPCritic", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.functional.relu, "elu": nn.functional.elu, "tanh": torch.tanh}


class MLPCritic(nn.Module):
    """K MLP critics on the pair (x, y), each with ``depth`` hidden layers of ``width`` units.

    Parameters
    ----------
    dim_x, dim_y : int
        Feature sizes of x and y.
    width : int
        Hidden units per layer.
    depth : int
        Number of hidden layers (>= 1).
    seeds : sequence of int
        One seed per critic (K = len(seeds)); initialisation follows ``nn.Linear``'s default,
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from a generator of that seed.
    activation : {"elu", "relu", "tanh"}
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        *,
        width: int = 128,
        depth: int = 2,
        seeds: Sequence[int] = (0,),
        activation: str = "elu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {list(ACTIVATIONS)}; received {activation!r}."
            )
        self.n_critics = len(seeds)
        self.activation = ACTIVATIONS[activation]
        shapes = {
            "w_x": (dim_x, width, dim_x + dim_y),
            "w_y": (dim_y, width, dim_x + dim_y),
            "b_in": (1, width, dim_x + dim_y),
        }
        for layer in range(depth - 1):
            shapes[f"w_{layer}"] = (width, width, width)
            shapes[f"b_{layer}"] = (1, width, width)
        shapes["w_out"] = (width, 1, width)
        shapes["b_out"] = (1, 1, width)
        self.depth = depth
        stacks: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            for name, (rows, cols, fan_in) in shapes.items():
                bound = 1.0 / math.sqrt(fan_in)
                stacks[name].append(torch.empty(rows, cols).uniform_(-bound, bound, generator=generator))
        for name, tensors in stacks.items():
            self.register_parameter(name, nn.Parameter(torch.stack(tensors)))

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, dim_x) -> (K, B, width): x's share of the first layer."""
        return torch.bmm(x, self.w_x)

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        """(K, B, dim_y) -> (K, B, width): y's share of the first layer."""
        return torch.bmm(y, self.w_y)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Rest of the MLP on summed embeddings: (K, ..., width) -> (K, ...) scores."""
        shape = h.shape[:-1]
        h = self.activation(h.reshape(h.shape[0], -1, h.shape[-1]) + self.b_in)
        for layer in range(self.depth - 1):
            h = self.activation(torch.baddbmm(getattr(self, f"b_{layer}"), h, getattr(self, f"w_{layer}")))
        return torch.baddbmm(self.b_out, h, self.w_out).reshape(shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores T_k(x_i, y_i): (K, B, dim_x), (K, B, dim_y) -> (K, B)."""
        return self.head(self.embed_x(x) + self.embed_y(y))
