"""perplexity(): agrees with a direct computation from logits, handles score_from, leaves the model as found."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from actlab.eval.perplexity import PerplexityResult, perplexity

VOCAB = 128


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(
        0, VOCAB, (5, 16), generator=torch.Generator().manual_seed(1)
    )  # [n_windows, seq_len]


def direct_nll(model: torch.nn.Module, windows: torch.Tensor, start: int) -> float:
    """Mean NLL of tokens [start, T) from one full-batch forward: the reference."""
    model.eval()
    with torch.no_grad():
        logits = model(windows).logits.float()  # [N, T, V]
    pred = logits[:, start - 1 : -1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(pred, windows[:, start:].reshape(-1)).item()


def test_matches_direct_computation_across_partial_batches(llama, windows) -> None:
    result = perplexity(llama, windows, batch_size=2)  # 5 windows: batches of 2, 2, 1
    expected = direct_nll(llama, windows, 1)
    assert isinstance(result, PerplexityResult)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.tokens == 5 * 15 and result.windows == 5 and result.seq_len == 16
    assert math.log(VOCAB) * 0.8 < result.nll < math.log(VOCAB) * 1.2  # random weights: near uniform


def test_is_deterministic_and_batch_size_independent(llama, windows) -> None:
    a = perplexity(llama, windows, batch_size=1)
    b = perplexity(llama, windows, batch_size=8)
    assert a.nll == pytest.approx(b.nll, rel=1e-6)
    assert perplexity(llama, windows, batch_size=1).nll == a.nll


@pytest.mark.parametrize("score_from", [0, 1, 8, 15])
def test_score_from_scores_only_later_positions(llama, windows, score_from: int) -> None:
    result = perplexity(llama, windows, batch_size=4, score_from=score_from)
    start = max(1, score_from)
    assert result.tokens == 5 * (16 - start) and result.score_from == score_from
    assert result.nll == pytest.approx(direct_nll(llama, windows, start), rel=1e-5)


class UniformLM(torch.nn.Module):
    """Equal logits everywhere: the perplexity must be the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.anchor)


def test_uniform_logits_give_vocab_size(windows) -> None:
    result = perplexity(UniformLM(VOCAB), windows, batch_size=3)
    assert result.ppl == pytest.approx(VOCAB, rel=1e-5)
    assert result.nll == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_model_mode_restored_and_no_grad(llama, windows) -> None:
    llama.train()
    try:
        perplexity(llama, windows[:2])
        assert llama.training
        assert all(p.grad is None for p in llama.parameters())
    finally:
        llama.eval()
    perplexity(llama, windows[:2])
    assert not llama.training


def test_int32_windows_and_progress_bar(llama, windows) -> None:
    a = perplexity(llama, windows.to(torch.int32), progress=True)
    assert a.nll == pytest.approx(perplexity(llama, windows).nll, rel=1e-6)
    assert a.to_dict()["tokens"] == a.tokens


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"windows": torch.zeros(16, dtype=torch.long)}, "integer tensor"),
        ({"windows": torch.zeros(2, 16)}, "integer tensor"),
        ({"windows": torch.zeros(0, 16, dtype=torch.long)}, "nothing to score"),
        ({"score_from": 16}, "nothing to score"),
        ({"batch_size": 0}, "batch_size must be positive"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str, windows) -> None:
    args = {"windows": windows, **kwargs}
    with pytest.raises(ValueError, match=message):
        perplexity(UniformLM(VOCAB), **args)
