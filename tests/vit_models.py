"""A small ViT with early exits for the tests and benchmarks (random weights, plain torch, no
timm): patch embedding, a class token, pre-norm blocks, a classifier on the class token
after ``exits`` blocks (1-based counts). ``forward(image)`` returns every exit's logits."""
from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm multi-head self-attention and MLP, as in ViT (attention written out: the
    tracer exports it without ``nn.MultiheadAttention``'s value-dependent checks)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(n, tokens, dim))
        return x + self.mlp(self.norm2(x))


class ExitViT(nn.Module):
    """``depth`` blocks of width ``dim`` on ``image``-sized RGB inputs cut in ``patch`` squares."""

    def __init__(self, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 6, heads: int = 3,
                 exits: tuple[int, ...] = (2, 4, 6), classes: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.exits = exits
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes)) for _ in exits)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 in self.exits:
                out.append(self.heads[len(out)](x[:, 0]))
        return out
