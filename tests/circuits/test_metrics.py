"""circuit_metric against direct computations on the trained demo model's logits (IOI pairs,
late and early corruptions), and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.circuits import CircuitJobConfig, find_circuit
from actstore.circuits.metrics import CircuitMetric, circuit_metric
from actstore.errors import ConfigError

from ..fidelity_cases import demo_case


@pytest.fixture(scope="module")
def case():
    return demo_case("late")


def _ld(logits: torch.Tensor, answer: list[int], wrong: list[int]) -> torch.Tensor:
    b = torch.arange(len(answer))
    return logits[b, -1, answer] - logits[b, -1, wrong]


def test_logit_diff(case):
    m = circuit_metric("logit-diff", answer=case.answer, wrong=case.wrong)
    for logits in (case.clean_logits, case.corrupted_logits):
        torch.testing.assert_close(m(logits), _ld(logits, case.answer, case.wrong), rtol=0, atol=0)
    assert m.higher_is_better and m.positions == (-1,)
    spread = _ld(case.clean_logits, case.answer, case.wrong) - _ld(
        case.corrupted_logits, case.answer, case.wrong
    )
    assert float(spread.abs().min()) > 1.0  # the corruption moves every pair's metric


def test_norm_logit_diff(case):
    m = circuit_metric(
        "norm-logit-diff",
        answer=case.answer,
        wrong=case.wrong,
        clean_logits=case.clean_logits,
        corrupted_logits=case.corrupted_logits,
    )
    clean, corr = (
        _ld(x, case.answer, case.wrong).double() for x in (case.clean_logits, case.corrupted_logits)
    )
    mid = (case.clean_logits + case.corrupted_logits) / 2
    want = (_ld(mid, case.answer, case.wrong).double() - corr.mean()) / (clean.mean() - corr.mean())
    torch.testing.assert_close(m(mid).double(), want, rtol=1e-6, atol=1e-6)
    assert (
        abs(float(m(case.clean_logits).mean()) - 1) < 1e-6
        and abs(float(m(case.corrupted_logits).mean())) < 1e-6
    )


def test_kl(case):
    m = circuit_metric("kl", clean_logits=case.clean_logits)
    assert not m.higher_is_better
    p = torch.softmax(case.clean_logits[:, -1].double(), -1).numpy()
    q = torch.softmax(case.corrupted_logits[:, -1].double(), -1).numpy()
    want = (p * (np.log(p) - np.log(q))).sum(-1)
    got = m(case.corrupted_logits).double().numpy()
    assert want.min() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(m(case.clean_logits).numpy(), 0, atol=1e-5)


def test_metrics_are_differentiable(case):
    logits = case.corrupted_logits.clone().requires_grad_(True)
    m = circuit_metric("kl", clean_logits=case.clean_logits)
    m(logits).sum().backward()
    assert logits.grad is not None and float(logits.grad[:, -1].abs().sum()) > 0
    assert float(logits.grad[:, :-1].abs().sum()) == 0  # reads the last position only


def test_user_function_passes_through(case):
    def last_logit(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 0]

    m = circuit_metric(last_logit)
    assert isinstance(m, CircuitMetric) and m.name == "last_logit"
    torch.testing.assert_close(m(case.clean_logits), case.clean_logits[:, -1, 0])
    assert circuit_metric(m) is m


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="logit-diff", answer=[5, 6], wrong=[7, 6]), "same token .6. for pair 1"),
        (dict(kind="logit-diff", answer=5), "needs answer= and wrong="),
        (dict(kind="logit-diff", answer=[1, 2], wrong=[3, 4, 5]), "one per pair"),
        (
            dict(kind="logit_diff", answer=1, wrong=2),
            "unknown circuit metric 'logit_diff'; use one of",
        ),
        (dict(kind="norm-logit-diff", answer=1, wrong=2), "needs clean_logits="),
        (dict(kind="kl"), "needs clean_logits="),
    ],
)
def test_refusals(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError, match=match):
        circuit_metric(kind, **kwargs)


def test_the_circuit_job_refuses_an_unknown_metric_by_the_same_check():
    # `actstore circuit` takes no function: the message offers none (circuit_metric's does)
    with pytest.raises(ConfigError, match=r"function") as lib:
        circuit_metric("logit_diff", answer=1, wrong=2)
    with pytest.raises(ConfigError) as job:
        find_circuit(CircuitJobConfig(model="gpt2", task="ioi", metric="logit_diff"))
    assert str(job.value) == str(lib.value).split(", or pass a function")[0] + "."


def test_refuses_undefined_normalisation_and_non_finite(case):
    with pytest.raises(ConfigError, match="same mean logit difference"):
        circuit_metric(
            "norm-logit-diff",
            answer=case.answer,
            wrong=case.wrong,
            clean_logits=case.clean_logits,
            corrupted_logits=case.clean_logits,
        )
    bad = case.clean_logits.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="clean_logits holds non-finite values"):
        circuit_metric("kl", clean_logits=bad)
    m = circuit_metric(lambda logits: logits[:, -1, 0] / 0.0)
    with pytest.raises(ConfigError, match="returned non-finite values"):
        m(case.clean_logits)
    with pytest.raises(ConfigError, match=r"one value per prompt pair, shape \(4,\)"):
        circuit_metric(lambda logits: logits[:, -1, 0].sum())(case.clean_logits)
    with pytest.raises(ConfigError, match="reads positions \\[40\\]"):
        circuit_metric("logit-diff", answer=1, wrong=2, position=40)(case.clean_logits)


@pytest.mark.parametrize("kind", ["logit-diff", "norm-logit-diff", "kl"])
def test_for_pairs_scores_a_chunk(case, kind):
    m = circuit_metric(
        kind,
        answer=case.answer,
        wrong=case.wrong,
        clean_logits=case.clean_logits,
        corrupted_logits=case.corrupted_logits,
    )
    full = m(case.corrupted_logits)
    assert m.splits
    torch.testing.assert_close(
        m.for_pairs(1, 3)(case.corrupted_logits[1:3]), full[1:3], rtol=0, atol=0
    )


def test_user_function_splits_only_with_a_pairs_keyword(case):
    answer = torch.tensor(case.answer)

    def with_pairs(logits: torch.Tensor, pairs: slice = slice(None)) -> torch.Tensor:
        return logits[torch.arange(len(logits)), -1, answer[pairs]]

    m = circuit_metric(with_pairs)
    torch.testing.assert_close(
        m.for_pairs(2, 4)(case.clean_logits[2:4]), m(case.clean_logits)[2:4], rtol=0, atol=0
    )
    plain = circuit_metric(lambda logits: logits[:, -1, 0])
    assert not plain.splits
    with pytest.raises(ConfigError, match="give the function a `pairs` keyword"):
        plain.for_pairs(0, 2)
