"""``char-lm``: a character-level language model as the optimizee, a small LSTM or
a small causal transformer, on Shakespeare's plays (``l2obench[text]``) or any
text file.

The optimizee is an ordinary ``torch.nn.Module`` turned into a seed-batched Task
by :func:`l2obench.api.module_task`: seed ``s`` initialises the network with
torch's own initialisation (``nn.Linear``, ``nn.Embedding``, ...) drawn for ``s``
alone, and draws each minibatch's windows uniformly, with replacement, from its
split of the text.  A window is ``context`` characters of input and the same
window shifted by one as the targets; the loss is the next-character
cross-entropy in nats, averaged over the window's positions and the minibatch.
The text, its fixed 90/5/5 split by position and its vocabulary are those of
:mod:`l2obench.plugins.text`.

- ``model = "lstm"``: an embedding of ``hidden`` units, ``layers`` LSTM layers of
  ``hidden`` units (the recurrence written with ``nn.Linear``, which ``vmap``
  batches over seeds), a linear read-out to the vocabulary.
- ``model = "transformer"``: token and learned position embeddings of width
  ``heads x hidden``, ``layers`` pre-norm blocks (causal self-attention with
  ``heads`` heads of ``hidden`` units, then an MLP 4x as wide with GELU), a final
  layer norm and a linear read-out.

Parameter groups are the networks' parts: ``embed``, ``cells`` (the LSTM) or
``position``, ``blocks`` and ``norm`` (the transformer), and ``head``.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2obench.api import TaskConfig, TaskFamily, hookimpl, module_task

from .text import corpus


class CharLMConfig(TaskConfig):
    """A small model by default: one LSTM layer of 32 units, windows of 32 characters, 16 a minibatch."""

    model: Literal["lstm", "transformer"] = pydantic.Field("lstm", description="the network: lstm or transformer")
    hidden: int = pydantic.Field(32, gt=0, description="units per LSTM layer; for the transformer, per attention head")
    layers: int = pydantic.Field(1, gt=0, description="LSTM layers or transformer blocks")
    heads: int = pydantic.Field(2, gt=0, description="attention heads (transformer only)")
    context: int = pydantic.Field(32, gt=0, description="characters per input window")
    batch_size: int = pydantic.Field(16, gt=0, description="windows per minibatch")
    eval_windows: int = pydantic.Field(
        64, gt=0, description="non-overlapping windows of the held-out split (its first ones) on which held-out "
                              "loss and accuracy are measured")
    text_file: Optional[str] = pydantic.Field(
        None, description="a UTF-8 text file to model; none: Shakespeare's plays (pip install 'l2obench[text]')")


class LSTMLanguageModel(nn.Module):
    """Embedding, stacked LSTM layers (Hochreiter & Schmidhuber 1997, with a forget gate), read-out."""

    def __init__(self, vocabulary: int, hidden: int, layers: int):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocabulary, hidden)
        self.cells = nn.ModuleList(nn.ModuleDict({"input": nn.Linear(hidden, 4 * hidden),
                                                  "recurrent": nn.Linear(hidden, 4 * hidden, bias=False)})
                                   for _ in range(layers))
        self.head = nn.Linear(hidden, vocabulary)

    def forward(self, chars: Tensor) -> Tensor:
        h = self.embed(chars)  # (B, T, hidden)
        for cell in self.cells:
            inputs = cell["input"](h)  # every position's input projection at once
            state = torch.zeros_like(inputs[:, 0, :self.hidden])
            memory = torch.zeros_like(state)
            outputs = []
            for t in range(inputs.shape[1]):
                i, f, g, o = (inputs[:, t] + cell["recurrent"](state)).chunk(4, dim=-1)
                memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
                state = torch.sigmoid(o) * torch.tanh(memory)
                outputs.append(state)
            h = torch.stack(outputs, dim=1)
        return self.head(h)


class Block(nn.Module):
    """A pre-norm transformer block: causal multi-head self-attention, then an MLP (Vaswani et al. 2017)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, h: Tensor) -> Tensor:
        B, T, W = h.shape
        q, k, v = self.qkv(self.attention_norm(h)).view(B, T, 3, self.heads, W // self.heads).unbind(2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, head)
        scores = q @ k.transpose(-1, -2) / math.sqrt(W // self.heads)
        causal = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
        attended = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        h = h + self.out(attended.transpose(1, 2).reshape(B, T, W))
        return h + self.down(F.gelu(self.up(self.mlp_norm(h))))


class TransformerLanguageModel(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final layer norm, read-out."""

    def __init__(self, vocabulary: int, hidden: int, layers: int, heads: int, context: int):
        super().__init__()
        width = heads * hidden
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, chars: Tensor) -> Tensor:
        h = self.embed(chars) + self.position.weight[:chars.shape[-1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def next_character_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each position's next character, averaged: ``(B, T, V), (B, T) -> ()``."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def next_character_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """The fraction of positions whose most likely next character is the right one: ``() ``."""
    return (logits.argmax(-1) == targets).to(logits.dtype).mean()


def windows(codes: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Every window of the text as (inputs, targets), ``(N - context, context)`` views each."""
    spans = codes.unfold(0, context + 1, 1)
    return spans[:, :-1], spans[:, 1:]


def build(config: CharLMConfig):
    text = corpus(config.text_file, minimum=config.context + 2)
    V = len(text.vocabulary)
    if config.model == "lstm":
        def factory():
            return LSTMLanguageModel(V, config.hidden, config.layers)
    else:
        def factory():
            return TransformerLanguageModel(V, config.hidden, config.layers, config.heads, config.context)
    data = {split: windows(codes, config.context) for split, codes in text.splits.items()}
    # the held-out evaluation set: the split's first eval_windows windows that do not overlap
    held_out = {split: tuple(t[::config.context] for t in pair) for split, pair in data.items()}
    task = module_task(factory, data, next_character_loss, batch_size=config.batch_size,
                       eval_examples=config.eval_windows, metrics={"accuracy": next_character_accuracy},
                       eval_data=held_out)
    task.vocabulary = text.vocabulary
    return task


char_lm = TaskFamily(CharLMConfig, build, description="character-level language model (LSTM or transformer) on "
                                                      "Shakespeare or a text file")


@hookimpl
def register_task_families(register):
    register("char-lm", char_lm)
