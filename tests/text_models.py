"""A BERT-like early-exit encoder for the tests (random weights, small dimensions): int64
token ids and an attention mask, a classifier on the first token after layers 2, 4 and 6
(DeeBERT / PABEE style). ``forward(input_ids, attention_mask)`` returns the three exits'
logits. The batch and sequence sizes are read once from ``input_ids`` and handed to every
layer, as many implementations do, so the exporter must recompute them in each stage."""
from __future__ import annotations

import math

import torch
from torch import nn


class Layer(nn.Module):
    """Post-norm self-attention and feed-forward block."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, n, length) -> torch.Tensor:
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-1, -2)) * self.scale + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(n, length, -1)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ff(x))


class EarlyExitBert(nn.Module):
    """Six layers, exits after ``exits`` (1-based layer counts)."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, layers: int = 6,
                 exits: tuple[int, ...] = (2, 4, 6), classes: int = 5, max_len: int = 160, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.exits = exits
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, classes))
                                   for _ in exits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        n, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, n, length)
            if i + 1 in self.exits:
                out.append(self.heads[len(out)](x[:, 0]))
        return out


def text_batch(n: int, length: int, vocab: int = 64, seed: int = 0) -> dict:
    """int64 ids and a 0/1 mask, each row padded after a random length (at least 1 token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


SEQUENCE = {"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}}
