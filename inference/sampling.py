"""Sampling the next token of every row at once, each row with its own settings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .params import GenerationParams

# Top-p first looks for the nucleus among this many most likely tokens.
NUCLEUS_CANDIDATES = 256
# The top_p a greedy row carries: any value below 1 (it never samples).
NUCLEUS_OFF = 0.5


class Sampler:
    """Per-row sampling settings held as tensors, so one call samples every row.

    Order as in transformers: repetition penalty, then greedy argmax or
    temperature, top-p and a multinomial draw. ``history`` holds each row's
    tokens so far (prompt included) for the repetition penalty, left-padded
    with the row's own first token: penalizing a token twice writes the same
    value twice, so the padding changes nothing.

    Every full-vocabulary operation costs a pass over ~50k logits per row per
    step, so the common cases take shortcuts: the penalty touches only the
    history's tokens (gather/scatter, as transformers does), and top-p works
    on the 256 most likely tokens whenever they hold the whole nucleus.
    """

    def __init__(
        self,
        temperature: torch.Tensor,
        top_p: torch.Tensor,
        penalty: torch.Tensor,
        greedy: torch.Tensor,
        history: torch.Tensor,
    ) -> None:
        self.temperature, self.top_p, self.penalty = temperature, top_p, penalty
        self.greedy, self.history = greedy, history
        self._refresh()

    @classmethod
    def for_rows(
        cls, params: Sequence[GenerationParams], prompts: Sequence[Sequence[int]], device: torch.device
    ) -> Sampler:
        """A sampler for rows with these params whose prompts were these token ids."""

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        # Greedy rows never use temperature or top-p; these values keep the
        # shared maths finite and the fast top-p path open.
        temperature = column([1.0 if p.greedy else p.temperature for p in params])
        top_p = column([NUCLEUS_OFF if p.greedy else p.top_p for p in params])
        penalty = column([p.repetition_penalty for p in params])
        greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool, device=device)
        width = max(len(ids) for ids in prompts)
        history = torch.tensor(
            [[ids[0]] * (width - len(ids)) + list(ids) for ids in prompts], dtype=torch.long, device=device
        )
        return cls(temperature, top_p, penalty, greedy, history)

    def _refresh(self) -> None:
        # Python flags, computed when rows change rather than every step, let a
        # step skip whole stages (and their device syncs).
        sampled = ~self.greedy
        self.all_greedy = not bool(sampled.any())
        self.any_greedy = bool(self.greedy.any())
        self.any_penalty = bool((self.penalty != 1).any())
        self.any_top_p = bool((self.top_p[sampled] < 1).any())
        self.any_full = bool((self.top_p[sampled] >= 1).any())

    def extend(self, other: Sampler) -> None:
        """Append ``other``'s rows after this sampler's."""
        width = max(self.history.shape[1], other.history.shape[1])
        self.temperature = torch.cat([self.temperature, other.temperature])
        self.top_p = torch.cat([self.top_p, other.top_p])
        self.penalty = torch.cat([self.penalty, other.penalty])
        self.greedy = torch.cat([self.greedy, other.greedy])
        self.history = torch.cat([_pad_history(self.history, width), _pad_history(other.history, width)])
        self._refresh()

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index``."""
        self.temperature = self.temperature.index_select(0, index)
        self.top_p = self.top_p.index_select(0, index)
        self.penalty = self.penalty.index_select(0, index)
        self.greedy = self.greedy.index_select(0, index)
        self.history = self.history.index_select(0, index)
        self._refresh()

    def to(self, device: torch.device) -> Sampler:
        """This sampler with its tensors on ``device`` (where the logits are, under a device map)."""
        if self.history.device != device:
            self.temperature, self.top_p, self.penalty, self.greedy, self.history = (
                t.to(device) for t in (self.temperature, self.top_p, self.penalty, self.greedy, self.history)
            )
        return self

    def observe(self, tokens: torch.Tensor) -> None:
        """Record each row's newly generated token (shape (rows,)) for the repetition penalty."""
        if self.any_penalty:
            self.history = torch.cat([self.history, tokens.view(-1, 1)], dim=1)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row, shape (rows,), from float32 logits (rows, vocab).

        May modify ``logits`` in place.
        """
        logits = self._penalize(logits)
        if self.all_greedy:
            return logits.argmax(dim=-1)
        sampled = self._sample(logits)
        if not self.any_greedy:
            return sampled
        return torch.where(self.greedy, logits.argmax(dim=-1), sampled)

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.any_penalty:
            return logits
        scores = logits.gather(1, self.history)
        scores = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return logits.scatter_(1, self.history, scores)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        probabilities = (logits / self.temperature).softmax(dim=-1)
        if self.any_top_p and not self.any_full:
            top, order = probabilities.topk(min(NUCLEUS_CANDIDATES, probabilities.shape[-1]), dim=-1)
            cumulative = top.cumsum(dim=-1)
            if bool((cumulative[:, -1:] >= self.top_p).all()):
                # Keep the most likely tokens until their mass reaches top_p (the
                # token that crosses it included), as TopPLogitsWarper does.
                kept = top.masked_fill(cumulative - top >= self.top_p, 0.0)
                return order.gather(1, torch.multinomial(kept, num_samples=1)).squeeze(1)
        if self.any_top_p:
            probabilities = self._nucleus(probabilities.log()).softmax(dim=-1)
        return torch.multinomial(probabilities, num_samples=1).squeeze(1)

    def _nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with tokens outside each row's top-p nucleus set to -inf (full sort)."""
        if not self.any_top_p:
            return scores
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - self.top_p)
        drop[:, -1] = False  # always keep the most likely token
        return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def _pad_history(history: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad ``history`` to ``width`` columns with each row's own first token."""
    missing = width - history.shape[1]
    if missing <= 0:
        return history
    return torch.cat([history[:, :1].expand(-1, missing), history], dim=1)
