"""Tests of ``lit_unlearn.losses`` against hand-computed values, naive loops, finite differences and exact identities.

References are computed independently: plain Python ``math`` on nested lists for values, the closed-form derivatives
derived in each test's docstring for gradients, ``torch.autograd.gradcheck`` (float64 finite differences) elsewhere.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn import losses as L

# A 2 x 3 batch: row 0 has two answer tokens (its last position is padding), row 1 has three.
LOGPS = [[-0.5, -1.0, 0.0], [-0.1, -3.0, -0.2]]
REF_LOGPS = [[-0.7, -0.4, 0.0], [-0.3, -2.0, -1.0]]
MASK = [[True, True, False], [True, True, True]]
VALID = [(b, i) for b in range(2) for i in range(3) if MASK[b][i]]
N_TOK = len(VALID)  # 5


def _t(values: list, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def _mask() -> torch.Tensor:
    return torch.tensor(MASK)


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _seq_sums(values: list) -> list[float]:
    return [sum(values[b][i] for i in range(3) if MASK[b][i]) for b in range(2)]


def _grad(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(fn(*tensors), tensors)


def _assert_close(actual: torch.Tensor, expected, **kw) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, **kw)


# ----------------------------------------------------------------------------------------------------- token_logps


def _naive_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list, list]:
    """One position at a time: full log-softmax of the logits at t, read at the label of t + 1."""
    batch, steps, _ = logits.shape
    logps = [[0.0] * (steps - 1) for _ in range(batch)]
    mask = [[False] * (steps - 1) for _ in range(batch)]
    for b in range(batch):
        for t in range(steps - 1):
            label = int(labels[b, t + 1])
            if label != -100:
                logps[b][t] = float(torch.log_softmax(logits[b, t].double(), dim=-1)[label])
                mask[b][t] = True
    return logps, mask


def _labels() -> torch.Tensor:
    # Row 0: prompt of 2 tokens, answer of 3, one pad. Row 1: prompt of 3, answer of 3.
    return torch.tensor([[-100, -100, 4, 1, 6, -100], [-100, -100, -100, 0, 2, 7]])


def test_token_logps_matches_naive_log_softmax_gather() -> None:
    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 6, 8)
    labels = _labels()
    logps, mask = L.token_logps(logits, labels)
    ref_logps, ref_mask = _naive_token_logps(logits, labels)
    assert logps.shape == mask.shape == (2, 5)
    assert logps.dtype == torch.float32
    assert mask.dtype == torch.bool
    assert mask.tolist() == ref_mask
    _assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)
    # Masked positions are exactly 0 (so exp(-ce) = 1 there, which is why every loss masks first).
    assert (logps[~mask] == 0).all()


def test_token_logps_shift_uses_logits_at_previous_position() -> None:
    """Put all the mass of position t on the label at t+1: log-probs are ~0 exactly when the shift is right."""
    labels = _labels()
    logits = torch.zeros(2, 6, 8)
    for b in range(2):
        for t in range(5):
            if labels[b, t + 1] != -100:
                logits[b, t, labels[b, t + 1]] = 50.0
    logps, mask = L.token_logps(logits, labels)
    assert mask.sum() == 6
    assert logps.abs().max() < 1e-15 + 8 * math.exp(-50)


def test_token_logps_ignored_labels_give_finite_zero_and_zero_gradient() -> None:
    logits = torch.randn(2, 6, 8, requires_grad=True)
    labels = _labels()
    logps, mask = L.token_logps(logits, labels)
    (grad,) = torch.autograd.grad(logps.sum(), logits)
    # Logits at positions whose next label is -100 (and the last position, which predicts nothing) get no gradient.
    assert torch.isfinite(grad).all()
    assert (grad[:, :-1][~mask] == 0).all()
    assert (grad[:, -1] == 0).all()


def test_token_logps_bf16_logits_give_float32_close_to_fp32() -> None:
    torch.manual_seed(1)
    logits = 3 * torch.randn(2, 6, 8)
    labels = _labels()
    bf16 = logits.bfloat16().requires_grad_()
    logps_bf16, mask = L.token_logps(bf16, labels)
    assert logps_bf16.dtype == torch.float32
    # Same rounded inputs in fp32: identical maths, so (almost) identical output.
    _assert_close(logps_bf16, L.token_logps(bf16.detach().float(), labels)[0], atol=1e-6, rtol=1e-6)
    # Against the unrounded fp32 logits: only the bf16 rounding of the inputs (~3 significant digits) remains.
    _assert_close(logps_bf16, L.token_logps(logits, labels)[0], atol=5e-2, rtol=0)
    (grad,) = torch.autograd.grad(logps_bf16.sum(), bf16)
    assert grad.dtype == torch.bfloat16
    assert torch.isfinite(grad.float()).all()


def test_token_logps_gradcheck() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    labels = _labels()
    assert torch.autograd.gradcheck(lambda x: L.token_logps(x, labels)[0], (logits,))


@pytest.mark.parametrize("chunk_elements", [2**25, 16, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_gradient_matches_autograd_through_log_softmax(
    monkeypatch: pytest.MonkeyPatch, chunk_elements: int, dtype: torch.dtype
) -> None:
    """The chunked custom backward equals autograd through the naive float32 log_softmax + gather, at any chunking."""
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", chunk_elements)  # 16 elements = 2 rows of V=8 per chunk; 1 = 1 row
    torch.manual_seed(7)
    base = (3 * torch.randn(2, 6, 8)).to(dtype)
    labels = _labels()
    upstream = torch.randn(2, 5)

    logits = base.clone().requires_grad_()
    logps, mask = L.token_logps(logits, labels)
    (grad,) = torch.autograd.grad((logps * upstream).sum(), logits)

    naive_logits = base.clone().requires_grad_()
    index = labels[:, 1:].clamp(min=0)[..., None]
    naive = torch.log_softmax(naive_logits[:, :-1].float(), -1).gather(-1, index)[..., 0] * mask
    (naive_grad,) = torch.autograd.grad((naive * upstream).sum(), naive_logits)

    assert grad.dtype == dtype
    _assert_close(logps, naive.detach(), atol=1e-5, rtol=1e-5)
    _assert_close(grad.float(), naive_grad.float(), atol=1e-6, rtol=1e-5)


def test_token_logps_backward_leaves_float32_logits_untouched() -> None:
    logits = torch.randn(2, 6, 8, requires_grad=True)
    before = logits.detach().clone()
    L.token_logps(logits, _labels())[0].sum().backward()
    assert torch.equal(logits.detach(), before)


def test_token_logps_gradcheck_chunked_reverse_and_forward_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", 24)  # 3 rows per chunk, the last chunk partial
    torch.manual_seed(8)
    logits = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3, -100, 5, 6], [-100, -100, 0, 7, 7, 1, -100]])
    assert torch.autograd.gradcheck(lambda x: L.token_logps(x, labels)[0], (logits,), check_forward_ad=True)


@pytest.mark.parametrize("chunk_elements", [2**25, 16])
def test_token_logps_jvp_matches_naive(monkeypatch: pytest.MonkeyPatch, chunk_elements: int) -> None:
    """torch.func.jvp (the G-effect callback's per-instance pass) through the custom function, under no_grad."""
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(9)
    labels = _labels()
    logits, tangent = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = labels[:, 1:] != -100

    def naive(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0] * mask

    with torch.no_grad():
        value, jvp = torch.func.jvp(lambda x: L.token_logps(x, labels)[0], (logits,), (tangent,))
        naive_value, naive_jvp = torch.func.jvp(naive, (logits,), (tangent,))
    _assert_close(value, naive_value, atol=1e-5, rtol=1e-5)
    _assert_close(jvp, naive_jvp, atol=1e-5, rtol=1e-5)
    assert (jvp[~mask] == 0).all()


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.long), "expected logits"),
        (torch.zeros(2, 6, 8), torch.zeros(2, 5, dtype=torch.long), "expected logits"),
        (torch.zeros(2, 6, 8), torch.zeros(2, 6), "integer token ids"),
    ],
)
def test_token_logps_rejects_bad_shapes(logits: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        L.token_logps(logits, labels)


def test_ignore_index_is_the_one_hugging_face_labels_use() -> None:
    """Labels are masked for HF's ``outputs.loss``, i.e. ``F.cross_entropy``'s default ``ignore_index``."""
    assert torch.nn.CrossEntropyLoss().ignore_index == L.IGNORE_INDEX


# ------------------------------------------------------------------------------------------------- hand values


def test_sequence_logps_hand_value() -> None:
    _assert_close(L.sequence_logps(_t(LOGPS), _mask()), [-1.5, -3.3])


def test_nll_and_gradient_ascent_hand_values() -> None:
    expected = (0.5 + 1.0 + 0.1 + 3.0 + 0.2) / 5  # the five answer tokens of LOGPS
    _assert_close(L.nll(_t(LOGPS), _mask()), expected)
    _assert_close(L.mean_token_nll(_t(LOGPS), _mask()), expected)
    _assert_close(L.gradient_ascent(_t(LOGPS), _mask()), -expected)


def test_nll_equals_torch_cross_entropy_mean() -> None:
    """``outputs.loss`` semantics: F.cross_entropy with ignore_index=-100 over the shifted tokens."""
    torch.manual_seed(3)
    logits = torch.randn(2, 6, 8)
    labels = _labels()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 8), labels[:, 1:].reshape(-1), ignore_index=-100)
    _assert_close(L.nll(*L.token_logps(logits, labels)), expected)


@pytest.mark.parametrize("beta", [0.0, 1.0, 5.0])
def test_wga_hand_value(beta: float) -> None:
    expected = sum(math.exp(beta * LOGPS[b][i]) * LOGPS[b][i] for b, i in VALID) / N_TOK
    _assert_close(L.wga(_t(LOGPS), _mask(), beta), expected)
    weights = [[math.exp(beta * v) for v in row] for row in LOGPS]
    _assert_close(L.wga_weights(_t(LOGPS), beta), weights)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_npo_hand_value(beta: float) -> None:
    ratios = [s - r for s, r in zip(_seq_sums(LOGPS), _seq_sums(REF_LOGPS), strict=True)]  # [-0.4, 0.0]
    expected = -(2 / beta) * sum(_logsigmoid(-beta * r) for r in ratios) / 2
    _assert_close(L.npo(_t(LOGPS), _t(REF_LOGPS), _mask(), beta), expected)


def test_npo_at_reference_is_two_over_beta_log_two() -> None:
    _assert_close(L.npo(_t(LOGPS), _t(LOGPS), _mask(), 0.1), 20 * math.log(2))


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (1.0, 0.5)])
def test_simnpo_hand_value(beta: float, delta: float) -> None:
    lengths = [sum(row) for row in MASK]
    mean_ce = [-s / n for s, n in zip(_seq_sums(LOGPS), lengths, strict=True)]  # [0.75, 1.1]
    expected = -(2 / beta) * sum(_logsigmoid(beta * (c - delta)) for c in mean_ce) / 2
    _assert_close(L.simnpo(_t(LOGPS), _mask(), beta, delta), expected)


def _tnpo_weight(lp: float, lq: float, beta: float, alpha: float = 0.0, eps: float = 0.0) -> float:
    p, q = math.exp(lp), math.exp(lq)
    return 2 * p ** (beta + alpha) / (p**beta + q**beta + eps)


@pytest.mark.parametrize(("beta", "eps"), [(4.0, 0.0), (4.0, 1e-5), (0.5, 0.0), (0.0, 0.0)])
def test_tnpo_hand_value(beta: float, eps: float) -> None:
    weights = [[_tnpo_weight(LOGPS[b][i], REF_LOGPS[b][i], beta, eps=eps) for i in range(3)] for b in range(2)]
    _assert_close(L.tnpo_weights(_t(LOGPS), _t(REF_LOGPS), beta, eps), weights)
    expected = sum(weights[b][i] * LOGPS[b][i] for b, i in VALID) / N_TOK
    _assert_close(L.tnpo(_t(LOGPS), _t(REF_LOGPS), _mask(), beta, eps), expected)


@pytest.mark.parametrize(("beta", "alpha", "eps"), [(4.0, 1.5, 0.0), (4.0, 1.5, 1e-5), (0.1, 1.0, 0.0)])
def test_wtnpo_hand_value(beta: float, alpha: float, eps: float) -> None:
    weights = [[_tnpo_weight(LOGPS[b][i], REF_LOGPS[b][i], beta, alpha, eps) for i in range(3)] for b in range(2)]
    _assert_close(L.wtnpo_weights(_t(LOGPS), _t(REF_LOGPS), beta, alpha, eps), weights)
    expected = sum(weights[b][i] * LOGPS[b][i] for b, i in VALID) / N_TOK
    _assert_close(L.wtnpo(_t(LOGPS), _t(REF_LOGPS), _mask(), beta, alpha, eps), expected)


# IdkDPO pair: chosen = refusal answers (lengths 2 and 1), rejected = forget answers (LOGPS/REF_LOGPS above).
CHOSEN = [[-2.0, -1.0], [-0.5, 0.0]]
CHOSEN_REF = [[-1.5, -1.5], [-1.0, 0.0]]
CHOSEN_MASK = [[True, True], [True, False]]


def test_dpo_hand_value() -> None:
    beta = 0.1
    chosen = [
        sum(CHOSEN[b][i] - CHOSEN_REF[b][i] for i in range(2) if CHOSEN_MASK[b][i]) for b in range(2)
    ]  # [0.0, 0.5]
    rejected = [s - r for s, r in zip(_seq_sums(LOGPS), _seq_sums(REF_LOGPS), strict=True)]  # [-0.4, 0.0]
    expected = -(2 / beta) * sum(_logsigmoid(beta * (c - r)) for c, r in zip(chosen, rejected, strict=True)) / 2
    value = L.dpo(_t(CHOSEN), _t(CHOSEN_REF), torch.tensor(CHOSEN_MASK), _t(LOGPS), _t(REF_LOGPS), _mask(), beta)
    _assert_close(value, expected)


def test_dpo_without_chosen_term_is_npo() -> None:
    """With the chosen log-ratio 0 (chosen = reference), DPO's 2/β scaling makes it exactly NPO on the rejected."""
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    value = L.dpo(zeros, zeros, torch.tensor(CHOSEN_MASK), _t(LOGPS), _t(REF_LOGPS), _mask(), 0.1)
    _assert_close(value, L.npo(_t(LOGPS), _t(REF_LOGPS), _mask(), 0.1))


# Two sequences of length 3, vocabulary 3; labels mask the first token (prompt) and row 1's last token (padding).
KL_LOGITS = [[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -1.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]]
KL_REF = [[[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [1.0, 1.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]]
KL_LABELS = [[-100, 2, 0], [-100, 1, -100]]


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_kl_divergence_hand_value() -> None:
    kls = []
    for b in range(2):
        for t in range(2):  # logits at t are scored against labels at t+1
            if KL_LABELS[b][t + 1] != -100:
                p, q = _softmax(KL_REF[b][t]), _softmax(KL_LOGITS[b][t])
                kls.append(sum(pv * math.log(pv / qv) for pv, qv in zip(p, q, strict=True)))
    value = L.kl_divergence(_t(KL_LOGITS), _t(KL_REF), torch.tensor(KL_LABELS))
    _assert_close(value, sum(kls) / len(kls))


def test_kl_divergence_matches_torch_kl_div_on_answer_positions() -> None:
    torch.manual_seed(4)
    logits, ref = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    labels = _labels()
    mask = labels[:, 1:] != -100
    logq = torch.log_softmax(logits[:, :-1][mask], -1)
    logp = torch.log_softmax(ref[:, :-1][mask], -1)
    expected = F.kl_div(logq, logp, reduction="batchmean", log_target=True)
    _assert_close(L.kl_divergence(logits, ref, labels), expected)


def test_kl_divergence_zero_at_reference_and_float32_for_bf16() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 6, 8, requires_grad=True)
    value = L.kl_divergence(logits, logits.detach(), _labels())
    (grad,) = torch.autograd.grad(value, logits)
    assert abs(float(value.detach())) < 1e-6
    assert grad.abs().max() < 1e-7
    bf16 = L.kl_divergence(logits.detach().bfloat16(), torch.randn(2, 6, 8).bfloat16(), _labels())
    assert bf16.dtype == torch.float32
    assert float(bf16) > 0


def test_kl_divergence_handles_zero_probability_reference_tokens() -> None:
    ref = torch.zeros(2, 6, 8)
    ref[..., 0] = float("-inf")  # the reference rules token 0 out: 0 · log 0 must count as 0, not NaN
    logits = torch.randn(2, 6, 8, requires_grad=True)
    value = L.kl_divergence(logits, ref, _labels())
    assert torch.isfinite(value)
    assert torch.isfinite(torch.autograd.grad(value, logits)[0]).all()


def test_rmu_hand_value() -> None:
    hidden = [[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]]  # (B=2, T-1=2, D=2)
    mask = [[True, False], [True, True]]
    control = [0.5, 1.0]
    expected = 0.0
    for b, t in [(0, 0), (1, 0), (1, 1)]:
        expected += sum((hidden[b][t][d] - control[d]) ** 2 for d in range(2)) / 2
    _assert_close(L.rmu(_t(hidden), _t(control), torch.tensor(mask)), expected / 3)
    # Retain form: per-position reference hidden states.
    ref = [[[0.0, 0.0], [9.0, 9.0]], [[1.0, 1.0], [2.0, 0.0]]]
    expected = 0.0
    for b, t in [(0, 0), (1, 0), (1, 1)]:
        expected += sum((hidden[b][t][d] - ref[b][t][d]) ** 2 for d in range(2)) / 2
    _assert_close(L.rmu(_t(hidden), _t(ref), torch.tensor(mask)), expected / 3)


def test_rmu_target_gets_no_gradient_and_bf16_hidden_is_float32() -> None:
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.randn(2, 3, 4, requires_grad=True)
    value = L.rmu(hidden, target, torch.ones(2, 3, dtype=torch.bool))
    value.backward()
    assert target.grad is None
    assert hidden.grad is not None
    assert L.rmu(hidden.detach().bfloat16(), target.detach(), torch.ones(2, 3, dtype=torch.bool)).dtype == torch.float32


# -------------------------------------------------------------------------------------------------- gradients


def _gradcheck_logps(fn) -> None:
    logps = _t(LOGPS, grad=True)
    assert torch.autograd.gradcheck(fn, (logps,))


def test_gradcheck_nll_and_gradient_ascent() -> None:
    _gradcheck_logps(lambda x: L.nll(x, _mask()))
    _gradcheck_logps(lambda x: L.gradient_ascent(x, _mask()))


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_gradcheck_npo(beta: float) -> None:
    _gradcheck_logps(lambda x: L.npo(x, _t(REF_LOGPS), _mask(), beta))


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (1.0, 0.5)])
def test_gradcheck_simnpo(beta: float, delta: float) -> None:
    _gradcheck_logps(lambda x: L.simnpo(x, _mask(), beta, delta))


def test_gradcheck_dpo() -> None:
    chosen, rejected = _t(CHOSEN, grad=True), _t(LOGPS, grad=True)
    mask_w = torch.tensor(CHOSEN_MASK)
    assert torch.autograd.gradcheck(
        lambda w, r: L.dpo(w, _t(CHOSEN_REF), mask_w, r, _t(REF_LOGPS), _mask(), 0.5), (chosen, rejected)
    )


def _naive_kl(logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, positions: str) -> torch.Tensor:
    """The KL term through plain autograd ops on (B, T, V) float64 tensors: F.kl_div per position, then the mean."""
    per_position = F.kl_div(
        torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), reduction="none", log_target=True
    ).sum(-1)  # (B, T)
    if positions == "all":
        return per_position.mean()
    mask = labels[:, 1:] != -100
    return per_position[:, :-1][mask].mean()


@pytest.mark.parametrize("positions", ["answer", "all"])
@pytest.mark.parametrize("chunk_elements", [2**25, 16, 1])
def test_kl_divergence_chunked_value_gradient_and_jvp_match_plain_autograd(
    monkeypatch: pytest.MonkeyPatch, chunk_elements: int, positions: str
) -> None:
    # 16 elements = 2 rows of V=8 per chunk (the last partial), 1 = one row: every pass of the chunked function.
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(10)
    labels = _labels()
    logits = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    ref, tangent = torch.randn(2, 6, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
    value = L.kl_divergence(logits, ref, labels, positions)
    expected = _naive_kl(logits, ref, labels, positions)
    _assert_close(value, expected, atol=1e-12, rtol=1e-12)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    _assert_close(grad, expected_grad, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        _, jvp = torch.func.jvp(lambda x: L.kl_divergence(x, ref, labels, positions), (logits.detach(),), (tangent,))
    _assert_close(jvp, (expected_grad * tangent).sum(), atol=1e-12, rtol=1e-10)


def test_kl_divergence_saves_no_logit_sized_tensor_of_its_own_for_backward() -> None:
    # Plain autograd would save the upcast rows and both log-softmaxes: (N, V) float32 tensors each. The chunked
    # function saves the logits and the reference themselves (same storage), so the backward costs no extra copy.
    logits = torch.randn(2, 6, 8, requires_grad=True)
    ref = torch.randn(2, 6, 8)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        L.kl_divergence(logits, ref, _labels())
    own = {logits.untyped_storage().data_ptr(), ref.untyped_storage().data_ptr()}
    large = [t for t in saved if t.is_floating_point() and t.numel() >= 8 * 4]  # ≥ 4 rows of the vocabulary
    assert large, "the function saves the logits for its backward"
    assert all(t.untyped_storage().data_ptr() in own for t in large), [tuple(t.shape) for t in large]


def test_gradcheck_kl_divergence() -> None:
    logits = _t(KL_LOGITS, grad=True)
    assert torch.autograd.gradcheck(lambda x: L.kl_divergence(x, _t(KL_REF), torch.tensor(KL_LABELS)), (logits,))


def test_gradcheck_rmu() -> None:
    torch.manual_seed(6)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    control = 2 * torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h: L.rmu(h, control, mask), (hidden,))


def _ga_grad() -> torch.Tensor:
    """∂L_GA/∂log p_i = 1/N on every valid token, 0 elsewhere."""
    return _grad(lambda x: L.gradient_ascent(x, _mask()), _t(LOGPS, grad=True))[0]


def test_gradient_ascent_gradient_is_one_over_n_on_valid_tokens() -> None:
    expected = [[1 / N_TOK if MASK[b][i] else 0.0 for i in range(3)] for b in range(2)]
    _assert_close(_ga_grad(), expected)


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_wga_gradient_is_detached_weight_over_n(beta: float) -> None:
    """sg[w]: ∂L/∂log p_i = p_i^β / N, not the derivative of p^β·log p (which would add β p^β log p / N)."""
    (grad,) = _grad(lambda x: L.wga(x, _mask(), beta), _t(LOGPS, grad=True))
    expected = [[math.exp(beta * LOGPS[b][i]) / N_TOK if MASK[b][i] else 0.0 for i in range(3)] for b in range(2)]
    _assert_close(grad, expected)


def test_wga_with_beta_zero_is_gradient_ascent() -> None:
    wga = lambda x: L.wga(x, _mask(), 0.0)  # noqa: E731
    _assert_close(wga(_t(LOGPS)), L.gradient_ascent(_t(LOGPS), _mask()))
    _assert_close(_grad(wga, _t(LOGPS, grad=True))[0], _ga_grad())


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_npo_gradient_is_sequence_weighted_gradient_ascent(beta: float) -> None:
    """The identity behind "NPO is weighted GA".

    With r_b = Σ_i log p_b,i - Σ_i log p_o,b,i and L = -(2/β)(1/B) Σ_b logσ(-β r_b):
    ∂L/∂log p_b,i = (2/B) σ(β r_b) = w_b / B with w_b = 2 p_b^β / (p_b^β + p_o,b^β) (p_b the sequence probability).
    GA's gradient is 1/N per valid token, hence ∇NPO = (N/B) · w_b · ∇GA: the token-vs-sequence normalisation is N/B.
    """
    (grad,) = _grad(lambda x: L.npo(x, _t(REF_LOGPS), _mask(), beta), _t(LOGPS, grad=True))
    weights = []
    for s, s_ref in zip(_seq_sums(LOGPS), _seq_sums(REF_LOGPS), strict=True):
        p, p_o = math.exp(s), math.exp(s_ref)
        weights.append(2 * p**beta / (p**beta + p_o**beta))
    batch = 2
    expected = torch.tensor(weights, dtype=torch.float64)[:, None] * (N_TOK / batch) * _ga_grad()
    _assert_close(grad, expected)


def test_npo_gradient_tends_to_gradient_ascent_direction_as_beta_vanishes() -> None:
    ga = _ga_grad().flatten()

    def cosine(beta: float) -> float:
        (grad,) = _grad(lambda x: L.npo(x, _t(REF_LOGPS), _mask(), beta), _t(LOGPS, grad=True))
        return float(F.cosine_similarity(grad.flatten(), ga, dim=0))

    # A large β weights the two sequences differently (r = -0.4 vs 0), so the direction is visibly not GA's ...
    assert cosine(20.0) < 0.99
    # ... and the angle closes monotonically as β → 0.
    cosines = [cosine(beta) for beta in (2.0, 0.5, 0.1, 1e-4)]
    assert cosines == sorted(cosines)
    assert cosines[-1] == pytest.approx(1.0, abs=1e-8)
    # The magnitude also converges: w_b → 1, so ∇NPO → (N/B) ∇GA.
    (grad,) = _grad(lambda x: L.npo(x, _t(REF_LOGPS), _mask(), 1e-6), _t(LOGPS, grad=True))
    _assert_close(grad, (N_TOK / 2) * _ga_grad(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_tnpo_gradient_equals_token_wise_npo_gradient(beta: float) -> None:
    """TNPO (eps = 0) has exactly the gradient of token-wise NPO, with the same 1/N token normalisation.

    Token-wise NPO: L_tok = -(2/β)(1/N) Σ_i logσ(-β d_i), d_i = log p_i - log p_o,i, so ∂L_tok/∂log p_i =
    (2/N) σ(β d_i) = w_i / N; TNPO: L = (1/N) Σ_i sg[w_i] log p_i, so ∂L/∂log p_i = w_i / N. Normalisation factor 1.
    The values differ (a log-sigmoid vs a weighted log-likelihood); only the gradients agree.
    """
    mask = _mask()
    ref = _t(REF_LOGPS)

    def token_wise_npo(x: torch.Tensor) -> torch.Tensor:
        per_token = -(2 / beta) * F.logsigmoid(-beta * (x - ref))
        return per_token[mask].mean()

    logps = _t(LOGPS, grad=True)
    (grad,) = _grad(lambda x: L.tnpo(x, ref, mask, beta), logps)
    (expected,) = _grad(token_wise_npo, logps)
    _assert_close(grad, expected)
    assert not torch.isclose(L.tnpo(logps, ref, mask, beta), token_wise_npo(logps))


def test_tnpo_with_beta_zero_is_gradient_ascent() -> None:
    tnpo = lambda x: L.tnpo(x, _t(REF_LOGPS), _mask(), 0.0)  # noqa: E731
    _assert_close(tnpo(_t(LOGPS)), L.gradient_ascent(_t(LOGPS), _mask()))
    _assert_close(_grad(tnpo, _t(LOGPS, grad=True))[0], _ga_grad())


def test_tnpo_eps_changes_the_weight_when_probabilities_are_small() -> None:
    """The paper code's 1e-5 is not negligible at β = 4 and p ~ 0.05 (p^β ~ 6e-6)."""
    lp = torch.full((1, 1), math.log(0.05), dtype=torch.float64)
    exact, code = L.tnpo_weights(lp, lp, 4.0), L.tnpo_weights(lp, lp, 4.0, eps=1e-5)
    _assert_close(exact, [[1.0]])
    _assert_close(code, [[2 * 0.05**4 / (2 * 0.05**4 + 1e-5)]])  # 0.556: the weight drops by almost half
    assert float(code) < 0.6


def test_wtnpo_with_alpha_zero_is_tnpo() -> None:
    for beta, eps in [(4.0, 0.0), (4.0, 1e-5)]:
        wtnpo = lambda x, b=beta, e=eps: L.wtnpo(x, _t(REF_LOGPS), _mask(), b, 0.0, e)  # noqa: E731
        tnpo = lambda x, b=beta, e=eps: L.tnpo(x, _t(REF_LOGPS), _mask(), b, e)  # noqa: E731
        _assert_close(wtnpo(_t(LOGPS)), tnpo(_t(LOGPS)))
        _assert_close(_grad(wtnpo, _t(LOGPS, grad=True))[0], _grad(tnpo, _t(LOGPS, grad=True))[0])


def test_wtnpo_with_beta_zero_is_wga_with_exponent_alpha() -> None:
    _assert_close(L.wtnpo(_t(LOGPS), _t(REF_LOGPS), _mask(), 0.0, 1.5), L.wga(_t(LOGPS), _mask(), 1.5))


def test_wtnpo_weight_is_tnpo_weight_times_p_to_alpha() -> None:
    lp, lq = _t(LOGPS), _t(REF_LOGPS)
    _assert_close(L.wtnpo_weights(lp, lq, 4.0, 1.5), L.tnpo_weights(lp, lq, 4.0) * lp.exp() ** 1.5)


def test_simnpo_gradient_closed_form() -> None:
    """∂L/∂log p_b,i = (2/B) σ(-β (m_b - δ)) / |y_b| with m_b the mean token NLL of sequence b."""
    beta, delta = 4.5, 0.2
    (grad,) = _grad(lambda x: L.simnpo(x, _mask(), beta, delta), _t(LOGPS, grad=True))
    lengths = [sum(row) for row in MASK]
    expected = []
    for b in range(2):
        m = -_seq_sums(LOGPS)[b] / lengths[b]
        g = (2 / 2) / (1 + math.exp(beta * (m - delta))) / lengths[b]
        expected.append([g if MASK[b][i] else 0.0 for i in range(3)])
    _assert_close(grad, expected)


def test_simnpo_tends_to_sequence_averaged_gradient_ascent_as_beta_vanishes() -> None:
    """logσ(βx) = -log 2 + βx/2 + O(β²), so L → (2/β) log 2 - mean_seq(m_b - δ): gradient 1/(B |y_b|) per token."""
    (grad,) = _grad(lambda x: L.simnpo(x, _mask(), 1e-6, 0.3), _t(LOGPS, grad=True))
    lengths = [sum(row) for row in MASK]
    expected = [[1 / (2 * lengths[b]) if MASK[b][i] else 0.0 for i in range(3)] for b in range(2)]
    _assert_close(grad, expected, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ shared behaviour


def _forget_losses() -> dict:
    ref = _t(REF_LOGPS)
    return {
        "gradient_ascent": lambda x, m: L.gradient_ascent(x, m),
        "wga": lambda x, m: L.wga(x, m, 5.0),
        "npo": lambda x, m: L.npo(x, ref, m, 0.5),
        "simnpo": lambda x, m: L.simnpo(x, m, 4.5),
        "tnpo": lambda x, m: L.tnpo(x, ref, m, 4.0),
        "tnpo_eps": lambda x, m: L.tnpo(x, ref, m, 4.0, 1e-5),
        "wtnpo": lambda x, m: L.wtnpo(x, ref, m, 4.0, 1.5),
        "dpo_rejected": lambda x, m: L.dpo(_t(CHOSEN), _t(CHOSEN_REF), torch.tensor(CHOSEN_MASK), x, ref, m, 0.1),
    }


def _all_logps_losses() -> dict:
    return {"nll": lambda x, m: L.nll(x, m), **_forget_losses()}


@pytest.mark.parametrize("name", list(_all_logps_losses()))
def test_masked_positions_never_contribute(name: str) -> None:
    """Changing log-probs at masked positions (to anything, even NaN) changes neither the value nor any gradient."""
    fn = _all_logps_losses()[name]
    mask = _mask()
    clean = _t(LOGPS, grad=True)
    value = fn(clean, mask)
    (grad,) = torch.autograd.grad(value, clean)
    for junk in (5.0, -1e4, float("nan")):
        dirty = _t(LOGPS).masked_fill(~mask, junk).requires_grad_()
        dirty_value = fn(dirty, mask)
        (dirty_grad,) = torch.autograd.grad(dirty_value, dirty)
        _assert_close(dirty_value, value)
        _assert_close(dirty_grad, grad)
        assert (dirty_grad[~mask] == 0).all()


def test_masked_positions_never_contribute_to_tnpo_reference() -> None:
    ref = _t(REF_LOGPS).masked_fill(~_mask(), float("nan"))
    _assert_close(L.tnpo(_t(LOGPS), ref, _mask(), 4.0), L.tnpo(_t(LOGPS), _t(REF_LOGPS), _mask(), 4.0))
    _assert_close(L.npo(_t(LOGPS), ref, _mask(), 0.5), L.npo(_t(LOGPS), _t(REF_LOGPS), _mask(), 0.5))


def test_kl_and_rmu_ignore_masked_positions() -> None:
    labels = torch.tensor(KL_LABELS)
    logits = _t(KL_LOGITS, grad=True)
    value = L.kl_divergence(logits, _t(KL_REF), labels)
    (grad,) = torch.autograd.grad(value, logits)
    # logits[b, t] matter only where labels[b, t+1] is a real token: rows 0 (t=0, 1) and 1 (t=0).
    unused = torch.tensor([[False, False, True], [False, True, True]])
    assert (grad[unused] == 0).all()
    changed = _t(KL_LOGITS).masked_fill(unused[..., None], 7.0)
    _assert_close(L.kl_divergence(changed, _t(KL_REF), labels), value)

    mask = torch.tensor([[True, False], [False, True]])
    hidden = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    value = L.rmu(hidden, torch.ones(3, dtype=torch.float64), mask)
    (grad,) = torch.autograd.grad(value, hidden)
    assert (grad[~mask] == 0).all()
    _assert_close(L.rmu(hidden.detach().masked_fill(~mask[..., None], 1e3), torch.ones(3), mask), value)


@pytest.mark.parametrize("name", list(_forget_losses()))
def test_unlearning_gradient_pushes_log_probs_down(name: str) -> None:
    """Every forget loss is minimised, so ∂L/∂log p_i > 0 on answer tokens: a descent step lowers their log-probs."""
    (grad,) = _grad(lambda x: _forget_losses()[name](x, _mask()), _t(LOGPS, grad=True))
    assert (grad[_mask()] > 0).all()


def test_dpo_gradient_pushes_refusal_up_and_forget_answer_down() -> None:
    chosen, rejected = _t(CHOSEN, grad=True), _t(LOGPS, grad=True)
    mask_w = torch.tensor(CHOSEN_MASK)
    value = L.dpo(chosen, _t(CHOSEN_REF), mask_w, rejected, _t(REF_LOGPS), _mask(), 0.1)
    grad_w, grad_l = torch.autograd.grad(value, (chosen, rejected))
    assert (grad_w[mask_w] < 0).all()
    assert (grad_l[_mask()] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_at_extreme_log_probs(dtype: torch.dtype) -> None:
    """log-probs of -1e4 (token fully unlearned) and 0 (certain) keep every loss and gradient finite."""
    extreme = [[-1e4, 0.0, 0.0], [0.0, -1e4, -1e4]]
    mask = torch.ones(2, 3, dtype=torch.bool)
    for lp_values, ref_values in [(extreme, [[0.0] * 3] * 2), ([[0.0] * 3] * 2, extreme), (extreme, extreme)]:
        ref = torch.tensor(ref_values, dtype=dtype)
        losses = {
            "nll": lambda x: L.nll(x, mask),
            "ga": lambda x: L.gradient_ascent(x, mask),
            "wga": lambda x: L.wga(x, mask, 5.0),
            "npo": lambda x, ref=ref: L.npo(x, ref, mask, 0.1),
            "simnpo": lambda x: L.simnpo(x, mask, 4.5),
            "tnpo": lambda x, ref=ref: L.tnpo(x, ref, mask, 4.0, 1e-5),
            "wtnpo": lambda x, ref=ref: L.wtnpo(x, ref, mask, 4.0, 1.5),
            "dpo": lambda x, ref=ref: L.dpo(ref, x.detach(), mask, x, ref, mask, 0.1),
        }
        for name, fn in losses.items():
            logps = torch.tensor(lp_values, dtype=dtype, requires_grad=True)
            value = fn(logps)
            (grad,) = torch.autograd.grad(value, logps)
            assert value.dtype == torch.float32, name
            assert torch.isfinite(value), name
            assert torch.isfinite(grad.float()).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_and_kl_finite_for_extreme_logits(dtype: torch.dtype) -> None:
    labels = _labels()
    logits = torch.zeros(2, 6, 8)
    logits[..., 3] = 1e4  # every label other than 3 gets log-prob -1e4
    logits = logits.to(dtype).requires_grad_()
    logps, mask = L.token_logps(logits, labels)
    assert logps.dtype == torch.float32
    assert torch.isfinite(logps).all()
    assert logps[mask].min() <= -9.9e3
    loss = L.gradient_ascent(logps, mask) + L.kl_divergence(logits, torch.zeros(2, 6, 8, dtype=dtype), labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad.float()).all()


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [L.mean_token_nll, L.nll, L.gradient_ascent])
def test_all_masked_batch_raises(fn) -> None:
    with pytest.raises(ValueError, match="no True entry"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))


def test_all_masked_batch_raises_for_weighted_and_kl() -> None:
    empty = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no True entry"):
        L.wga(torch.zeros(2, 3), empty, 1.0)
    with pytest.raises(ValueError, match="no True entry"):
        L.tnpo(torch.zeros(2, 3), torch.zeros(2, 3), empty, 4.0)
    with pytest.raises(ValueError, match="-100 everywhere"):
        L.kl_divergence(torch.zeros(2, 4, 5), torch.zeros(2, 4, 5), torch.full((2, 4), -100))


def test_simnpo_rejects_a_sequence_without_answer_tokens() -> None:
    mask = torch.tensor([[True, True], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        L.simnpo(torch.zeros(2, 2), mask, 4.5)


def test_npo_tolerates_a_sequence_without_answer_tokens() -> None:
    """An empty row has log-ratio 0: a constant (2/β) log 2 contribution with zero gradient, no NaN."""
    mask = torch.tensor([[True, True], [False, False]])
    logps = torch.tensor([[-1.0, -2.0], [0.0, 0.0]], requires_grad=True)
    value = L.npo(logps, torch.zeros(2, 2), mask, 0.1)
    (grad,) = torch.autograd.grad(value, logps)
    assert torch.isfinite(value)
    assert (grad[1] == 0).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: L.nll(torch.zeros(2, 3), torch.ones(2, 3)), "bool"),
        (lambda: L.nll(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool)), "shape"),
        (lambda: L.npo(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 0.1), "ref_logps"),
        (lambda: L.npo(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 0.0), "beta"),
        (lambda: L.simnpo(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), -1.0), "beta"),
        (lambda: L.wga(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), -1.0), "beta"),
        (lambda: L.tnpo_weights(torch.zeros(2, 3), torch.zeros(2, 3), 4.0, eps=-1.0), "eps"),
        (lambda: L.wtnpo_weights(torch.zeros(2, 3), torch.zeros(2, 3), 4.0, -1.0), "alpha"),
        (lambda: L.rmu(torch.zeros(2, 3, 4), torch.zeros(5), torch.ones(2, 3, dtype=torch.bool)), "broadcast"),
        (lambda: L.rmu(torch.zeros(2, 4, 4), torch.zeros(4), torch.ones(2, 3, dtype=torch.bool)), "hidden"),
        (lambda: L.kl_divergence(torch.zeros(2, 4, 5), torch.zeros(2, 4, 6), torch.zeros(2, 4)), "ref_logits"),
        (
            lambda: L.dpo(
                *(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)),
                *(torch.zeros(3, 3), torch.zeros(3, 3), torch.ones(3, 3, dtype=torch.bool)),
                0.1,
            ),
            "rows",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("value", "allow_zero", "message"),
    [(0.0, False, "beta must be > 0, got 0.0."), (-1.0, True, "beta must be >= 0, got -1.0."), (math.nan, True, "nan")],
)
def test_check_positive_is_the_one_coefficient_check(value: float, allow_zero: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        L.check_positive(value, "beta", allow_zero)
    L.check_positive(1e-12, "beta")
    L.check_positive(0.0, "beta", allow_zero=True)
