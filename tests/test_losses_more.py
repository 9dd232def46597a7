"""SatImp, UNDIAL, CE-U and PDU's forget loss against the worked examples and identities of objectives_more.md.

The worked numbers (S1, S2, U1, U2, C1, C2, P1) were computed in float64 from independent transcriptions of the
formulas; they are compared to the printed precision (6 significant digits, or 1e-6 absolute). Gradients are checked
against closed forms and ``torch.autograd.gradcheck`` (float64 finite differences) where the loss has no stop-gradient.
"""

import math

import pytest
import torch

from lit_unlearn import losses as L

F64 = torch.float64


def _t(values: list, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def _approx(actual: torch.Tensor | float, expected: float) -> None:
    """The published value to its printed precision: 6 significant digits, or 1e-6 absolute."""
    assert float(actual) == pytest.approx(expected, rel=5e-6, abs=1e-6)


def _grad(value: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, wrt)[0]


# ---------------------------------------------------------------------------------------------------------- SatImp

S1_LOGPS = [[-0.1, -0.7, -2.3], [-0.02, -1.5, -0.4]]
S1_MASK = torch.ones(2, 3, dtype=torch.bool)
S2_MASK = torch.tensor([[True, True, True], [True, True, False]])  # the last token of sequence 2 is padding


@pytest.mark.parametrize(
    ("beta1", "beta2", "expected"),
    [(5.0, 1.0, -0.00588065), (5.0, 0.1, -0.0215304), (0.0, 0.0, -0.836667), (1.0, 0.0, -0.215186)],
)
def test_satimp_worked_example_s1(beta1: float, beta2: float, expected: float) -> None:
    _approx(L.satimp(_t(S1_LOGPS), S1_MASK, beta1, beta2), expected)


def test_satimp_s1_weights_and_total_losses() -> None:
    weights = L.satimp_weights(_t(S1_LOGPS), 5.0, 1.0)
    expected = [[0.0577190, 0.0152018, 9.11446e-6], [0.0179170, 0.000429675, 0.0446173]]
    torch.testing.assert_close(weights, _t(expected), rtol=5e-6, atol=1e-9)
    forget, retain = L.satimp(_t(S1_LOGPS), S1_MASK, 5.0, 1.0), 1.2
    _approx(0.1 * forget + 1.0 * retain, 1.19941)  # OpenUnlearning's config weights γ = 0.1, α = 1
    _approx(1.0 * forget + 0.1 * retain, 0.114119)  # its class defaults, also the authors' forget 1, retain 0.1


def test_satimp_worked_example_s2_is_a_token_mean_over_the_batch() -> None:
    value = L.satimp(_t(S1_LOGPS), S2_MASK, 5.0, 1.0)
    _approx(value, -0.00348740)
    # The per-sequence mean (not what SatImp does) is a different number.
    terms = [[math.exp(5 * v) * (1 - math.exp(v)) * v for v in row] for row in S1_LOGPS]
    per_sequence = (sum(terms[0]) / 3 + sum(terms[1][:2]) / 2) / 2
    _approx(per_sequence, -0.00298973)
    assert abs(float(value) - per_sequence) > 1e-4


def test_satimp_without_weights_is_gradient_ascent() -> None:
    x = _t(S1_LOGPS, grad=True)
    satimp, ga = L.satimp(x, S2_MASK, 0.0, 0.0), L.gradient_ascent(x, S2_MASK)
    torch.testing.assert_close(satimp, ga)
    torch.testing.assert_close(_grad(satimp, x), _grad(ga, x))


def test_satimp_without_importance_is_wga() -> None:
    x = _t(S1_LOGPS, grad=True)
    satimp, wga = L.satimp(x, S1_MASK, 5.0, 0.0), L.wga(x, S1_MASK, 5.0)
    torch.testing.assert_close(satimp, wga)
    torch.testing.assert_close(_grad(satimp, x), _grad(wga, x))
    _approx(satimp, -0.0258125)  # both, on S1 (OpenUnlearning's WGA with β = 5)


@pytest.mark.parametrize(("beta1", "beta2"), [(5.0, 0.1), (5.0, 1.0), (2.0, 3.0)])
def test_satimp_gradient_is_the_detached_weight_over_n(beta1: float, beta2: float) -> None:
    """∂F/∂log p_i = w_i / N: the weights are constants (the derivative of w·log p would add terms in log p)."""
    x = _t(S1_LOGPS, grad=True)
    grad = _grad(L.satimp(x, S2_MASK, beta1, beta2), x)
    expected = [
        [math.exp(beta1 * v) * (1 - math.exp(v)) ** beta2 / 5 if S2_MASK[b, i] else 0.0 for i, v in enumerate(row)]
        for b, row in enumerate(S1_LOGPS)
    ]
    torch.testing.assert_close(grad, _t(expected))
    assert (grad[S2_MASK] > 0).all()  # a descent step lowers every answer token's log-prob


def test_satimp_masked_positions_never_contribute() -> None:
    x = _t(S1_LOGPS, grad=True)
    value = L.satimp(x, S2_MASK, 5.0, 0.1)
    grad = _grad(value, x)
    for junk in (5.0, -1e4, 0.0, float("nan")):
        dirty = _t(S1_LOGPS).masked_fill(~S2_MASK, junk).requires_grad_()
        dirty_value = L.satimp(dirty, S2_MASK, 5.0, 0.1)
        torch.testing.assert_close(dirty_value, value)
        torch.testing.assert_close(_grad(dirty_value, dirty), grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_satimp_finite_at_certain_and_impossible_tokens(dtype: torch.dtype) -> None:
    """log p = 0 (1 - p = 0, and 0^0 = 1 when β2 = 0) and log p = -1e4 keep the value and gradient finite."""
    for beta2 in (0.0, 0.1):
        logps = torch.tensor([[0.0, -1e4, -1e-8]], dtype=dtype, requires_grad=True)
        value = L.satimp(logps, torch.ones(1, 3, dtype=torch.bool), 5.0, beta2)
        assert value.dtype == torch.float32
        assert torch.isfinite(value)
        assert torch.isfinite(_grad(value, logps).float()).all()
    torch.testing.assert_close(L.satimp_weights(torch.zeros(1, 1), 5.0, 0.0), torch.ones(1, 1))


# ---------------------------------------------------------------------------------------------------------- UNDIAL

# U1: V = 4 and three scored positions; as (B, T, V) logits the positions are t = 0, 1, 2 of one sequence of length 4
# whose first label (the prompt) is -100 and whose last position predicts nothing.
Z_TEACHER = [[2.0, 0.5, -1.0, 0.0], [0.0, 3.0, 0.5, -0.5], [1.0, 1.0, 2.5, 0.0]]
Z_STUDENT = [[1.5, 0.8, -0.5, 0.2], [0.3, 2.0, 0.7, -0.2], [0.9, 1.1, 1.8, 0.1]]
U1_Y = [0, 1, 2]


def _sequence(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    """(1, len(rows) + 1, V) logits: the rows, then a last position that predicts nothing (its values are junk)."""
    return _t([[*rows, [9.0] * len(rows[0])]], grad=grad)


def _u1_labels(y: list[int] = U1_Y) -> torch.Tensor:
    return torch.tensor([[-100, *y]])


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


@pytest.mark.parametrize(("beta", "expected"), [(10.0, 1.80503), (3.0, 1.61536), (1.0, 1.14153), (0.0, 0.893726)])
def test_undial_worked_example_u1(beta: float, expected: float) -> None:
    _approx(L.undial(_sequence(Z_STUDENT), _sequence(Z_TEACHER), _u1_labels(), beta), expected)


def test_undial_u1_per_position_losses_and_target_probability() -> None:
    """Each position alone (the others relabelled -100): ℓ_t, and q_y from the closed form."""
    for t, expected in enumerate([1.70151, 2.03866, 1.67492]):
        y = [label if s == t else -100 for s, label in enumerate(U1_Y)]
        _approx(L.undial(_sequence(Z_STUDENT), _sequence(Z_TEACHER), _u1_labels(y), 10.0), expected)
    for t, expected in enumerate([1.11193e-4, 2.80048e-4, 8.59211e-5]):
        p = _softmax(Z_TEACHER[t])[U1_Y[t]]
        _approx(p * math.exp(-10) / (1 - p + p * math.exp(-10)), expected)


def test_undial_worked_example_u2_answer_mean_and_openunlearning_all_positions() -> None:
    """Sequence 2 is U1 reversed; shifted labels [[-100, 1, 2], [-100, 1, 0]]."""
    student = torch.cat([_sequence(Z_STUDENT), _sequence(Z_STUDENT[::-1])])
    teacher = torch.cat([_sequence(Z_TEACHER), _sequence(Z_TEACHER[::-1])])
    labels = torch.tensor([[-100, -100, 1, 2], [-100, -100, 1, 0]])
    _approx(L.undial(student, teacher, labels, 10.0), 1.86344)
    # OpenUnlearning's mean over every position, the masked ones being plain distillation (no index wrap-around:
    # V = 4 < 100 would make its vocabulary index -100 fail).
    _approx(L.undial(student, teacher, labels, 10.0, positions="all"), 1.57743)


def test_undial_at_the_teacher_with_beta_zero_is_its_entropy_with_zero_gradient() -> None:
    student = _sequence(Z_TEACHER, grad=True)
    value = L.undial(student, _sequence(Z_TEACHER), _u1_labels(), 0.0)
    entropy = sum(-sum(p * math.log(p) for p in _softmax(row)) for row in Z_TEACHER) / 3
    _approx(value, 0.806999)
    torch.testing.assert_close(value, torch.tensor(entropy, dtype=F64))
    assert _grad(value, student).abs().max() < 1e-15


def test_undial_gradient_is_student_softmax_minus_target_over_n() -> None:
    student = _sequence(Z_STUDENT, grad=True)
    grad = _grad(L.undial(student, _sequence(Z_TEACHER), _u1_labels(), 3.0), student)
    expected = torch.zeros(1, 4, 4, dtype=F64)
    for t in range(3):
        lowered = list(Z_TEACHER[t])
        lowered[U1_Y[t]] -= 3.0
        expected[0, t] = (_t(_softmax(Z_STUDENT[t])) - _t(_softmax(lowered))) / 3
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_undial_gradcheck(positions: str) -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[-100, 3, 1, -100], [-100, -100, 0, 2]])
    teacher = torch.randn(2, 4, 5, dtype=F64)
    student = torch.randn(2, 4, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: L.undial(z, teacher, labels, 3.0, positions), (student,))


def test_undial_teacher_gets_no_gradient() -> None:
    teacher = _sequence(Z_TEACHER, grad=True)
    L.undial(_sequence(Z_STUDENT, grad=True), teacher, _u1_labels(), 10.0).backward()
    assert teacher.grad is None


def test_undial_and_ceu_agree_as_beta_grows() -> None:
    """β → ∞ removes the label from the teacher's distribution: at student = teacher that is CE-U's target."""
    z = _sequence(Z_TEACHER)
    torch.testing.assert_close(L.undial(z, z, _u1_labels(), 1e4), L.ceu(z, _u1_labels(), ignore_first_n=0))
    torch.testing.assert_close(L.undial(z, z, _u1_labels(), math.inf), L.ceu(z, _u1_labels(), ignore_first_n=0))


# ------------------------------------------------------------------------------------------------------------ CE-U

C2_Z = [
    [0.2, -0.3, 1.0, 0.4],
    [1.2, 0.1, -0.7, 0.3],
    [0.5, 2.2, -0.1, 0.0],
    [-0.4, 0.6, 1.9, 0.2],
    [0.0, 0.0, 0.0, 0.0],
]
C2_LABELS = torch.tensor([[-100, -100, 0, 1, 2]])


def test_ceu_worked_example_c1() -> None:
    _approx(L.ceu(_sequence(Z_STUDENT), _u1_labels(), ignore_first_n=0), 1.81721)
    for t, (expected, p_y) in enumerate([(1.71951, 0.525085), (2.05382, 0.638562), (1.67830, 0.479424)]):
        y = [label if s == t else -100 for s, label in enumerate(U1_Y)]
        _approx(L.ceu(_sequence(Z_STUDENT), _u1_labels(y), ignore_first_n=0), expected)
        _approx(_softmax(Z_STUDENT[t])[U1_Y[t]], p_y)


def test_ceu_worked_example_c2_skips_the_first_answer_token() -> None:
    z = _t([C2_Z], grad=True)
    _approx(L.ceu(z, C2_LABELS, ignore_first_n=0), 2.05283)
    value = L.ceu(z, C2_LABELS)  # n = 1, OpenUnlearning's default
    _approx(value, 2.18965)
    # Only Z rows 2 and 3 (predicting labels 1 and 2) are scored: every other row gets no gradient.
    grad = _grad(value, z)
    assert grad[0, 2:4].abs().min() > 0
    assert (grad[0, [0, 1, 4]] == 0).all()


def test_ceu_skips_the_first_n_tokens_of_each_answer() -> None:
    """Rows with different prompt lengths: n counts answer tokens per row, not positions."""
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 5, dtype=F64)
    labels = torch.tensor([[-100, 1, 2, 3, 4, -100], [-100, -100, -100, 0, 1, 2]])
    skipped = torch.tensor([[-100, -100, -100, 3, 4, -100], [-100, -100, -100, -100, -100, 2]])
    torch.testing.assert_close(L.ceu(logits, labels, ignore_first_n=2), L.ceu(logits, skipped, ignore_first_n=0))


def _naive_ceu_terms(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per scored position: (ℓ from its definition, H(q), -log(1 - p_y)), in plain Python."""
    out = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            row = logits[b, t].tolist()
            p = _softmax(row)
            q = _softmax([v for v, i in zip(row, range(len(row)), strict=True) if i != y])
            q.insert(y, 0.0)
            loss = -sum(qv * math.log(pv) for qv, pv in zip(q, p, strict=True) if qv > 0)
            entropy = -sum(qv * math.log(qv) for qv in q if qv > 0)
            out.append((loss, entropy, -math.log(1 - p[y])))
    return out


def test_ceu_is_target_entropy_plus_unlikelihood() -> None:
    torch.manual_seed(2)
    logits = 2 * torch.randn(2, 5, 6, dtype=F64)
    labels = torch.tensor([[-100, 1, 5, 0, -100], [-100, -100, 3, 3, 2]])
    terms = _naive_ceu_terms(logits, labels)
    for loss, entropy, unlikelihood in terms:
        assert loss == pytest.approx(entropy + unlikelihood, rel=1e-12)
    expected = sum(loss for loss, _, _ in terms) / len(terms)
    torch.testing.assert_close(L.ceu(logits, labels, ignore_first_n=0), torch.tensor(expected, dtype=F64))


def test_ceu_gradient_is_the_unlikelihood_gradient() -> None:
    """∇_z ℓ = p - q = ∇_z[-log(1 - p_y)]: the target entropy H(q) is a constant (its logits are detached)."""
    torch.manual_seed(3)
    logits = (2 * torch.randn(2, 5, 6, dtype=F64)).requires_grad_()
    labels = torch.tensor([[-100, 1, 5, 0, -100], [-100, -100, 3, 3, 2]])
    grad = _grad(L.ceu(logits, labels, ignore_first_n=0), logits)
    mask = labels[:, 1:] != -100
    p_y = torch.softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    unlikelihood = -torch.log1p(-p_y[mask]).mean()
    expected = _grad(unlikelihood, logits)
    torch.testing.assert_close(grad, expected, atol=1e-15, rtol=1e-12)
    assert (grad[:, :-1][~mask] == 0).all()
    assert (grad[:, -1] == 0).all()


# ------------------------------------------------------------------------------------------------------------- PDU

P1_LOGITS = [
    [[2.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5], [4.0, -4.0, 0.0, 0.0]],
    [[0.0, 1.0, 0.0, 1.0], [3.0, 1.0, -1.0, 1.0], [0.0, 0.0, 8.0, 0.0], [9.0, 9.0, 9.0, 9.0]],
]
P1_LABELS = [[-100, 5, 6, 7], [-100, 8, 9, -100]]  # ids above V = 4: only the mask matters


def test_pdu_worked_example_p1_with_the_shifted_mask() -> None:
    gaps = [[(max(row) - sum(row) / len(row)) ** 2 for row in seq] for seq in P1_LOGITS]
    assert gaps == [[2.25, 9.0, 0.0, 16.0], [0.25, 4.0, 36.0, 0.0]]
    # Position t scores label t+1: rows 0-2 of sequence 1, rows 0-1 of sequence 2.
    assert (2.25 + 9 + 0 + 0.25 + 4) / 5 == 3.1
    _approx(L.pdu_forget(_t(P1_LOGITS), torch.tensor(P1_LABELS)), 3.1)


def test_pdu_openunlearning_unshifted_mask_gives_13() -> None:
    """The contrast: OpenUnlearning masks the logits with the UNSHIFTED labels, i.e. this function's value on the
    labels moved one position later (one position appended to the logits, which predicts nothing)."""
    gaps = [[2.25, 9.0, 0.0, 16.0], [0.25, 4.0, 36.0, 0.0]]
    unshifted = [gaps[b][t] for b in range(2) for t in range(4) if P1_LABELS[b][t] != -100]  # no shift
    assert sum(unshifted) / len(unshifted) == 13
    logits = torch.cat([_t(P1_LOGITS), torch.zeros(2, 1, 4, dtype=F64)], dim=1)
    labels = torch.cat([torch.full((2, 1), -100), torch.tensor(P1_LABELS)], dim=1)
    _approx(L.pdu_forget(logits, labels), 13.0)


def test_pdu_forget_is_zero_exactly_for_constant_logits() -> None:
    labels = torch.tensor(P1_LABELS)
    per_position = _t([[0.5, -2.0, 3.0, 7.0], [1.0, 0.0, -1.0, 4.0]])  # a different constant at every position
    constant = per_position[..., None].expand(2, 4, 4).clone().requires_grad_()
    value = L.pdu_forget(constant, labels)
    assert float(value) == 0.0
    assert (_grad(value, constant) == 0).all()
    one_off = constant.detach().clone()
    one_off[1, 1, 0] += 1e-3  # a scored position (sequence 2, t = 1)
    assert float(L.pdu_forget(one_off, labels)) > 0


def test_pdu_forget_is_invariant_to_a_constant_per_position() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 4, 6, dtype=F64)
    labels = torch.tensor(P1_LABELS)
    shifted = logits + 10 * torch.randn(2, 4, 1, dtype=F64)
    torch.testing.assert_close(L.pdu_forget(shifted, labels), L.pdu_forget(logits, labels))


def test_pdu_forget_gradcheck() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 4, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: L.pdu_forget(z, torch.tensor(P1_LABELS)), (logits,))


# -------------------------------------------------------------------------------------------- shared: masks, dtypes

LOGIT_LOSSES = {
    "undial": lambda z, y: L.undial(z, z.detach().flip(-1), y, 3.0),
    "ceu": lambda z, y: L.ceu(z, y, ignore_first_n=0),
    "pdu_forget": L.pdu_forget,
}
MASK_LABELS = torch.tensor([[-100, 2, 0, -100, -100], [-100, -100, 1, 3, 4]])
UNSCORED = torch.tensor(
    [[False, False, True, True, True], [True, False, False, False, True]]
)  # t with label t+1 = -100


@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
def test_masked_positions_never_contribute(name: str) -> None:
    """Logits at positions whose next label is -100 (and the last one) change neither the value nor the gradient."""
    fn = LOGIT_LOSSES[name]
    torch.manual_seed(6)
    clean = torch.randn(2, 5, 5, dtype=F64, requires_grad=True)
    value = fn(clean, MASK_LABELS)
    grad = _grad(value, clean)
    assert (grad[UNSCORED] == 0).all()
    for junk in (1e4, -1e4, float("nan")):
        dirty = clean.detach().masked_fill(UNSCORED[..., None], junk).requires_grad_()
        dirty_value = fn(dirty, MASK_LABELS)
        torch.testing.assert_close(dirty_value, value)
        torch.testing.assert_close(_grad(dirty_value, dirty), grad)


@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
def test_bf16_logits_give_a_float32_loss(name: str) -> None:
    torch.manual_seed(7)
    logits = torch.randn(2, 5, 5)
    bf16 = logits.bfloat16().requires_grad_()
    value = LOGIT_LOSSES[name](bf16, MASK_LABELS)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, LOGIT_LOSSES[name](bf16.detach().float(), MASK_LABELS))
    assert _grad(value, bf16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: L.satimp(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), -1.0, 0.1), "beta1"),
        (lambda: L.satimp(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 5.0, -0.1), "beta2"),
        (lambda: L.satimp(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), 5.0, 0.1), "no True entry"),
        (lambda: L.undial(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), 1.0), "ref"),
        (lambda: L.undial(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]), -1.0), "beta"),
        (lambda: L.undial(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]), 1.0, "x"), "'all'"),
        (lambda: L.undial(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 9]]), 1.0), r"\[0, 4\)"),
        (lambda: L.undial(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.full((1, 3), -100), 1.0, "all"), "-100"),
        (lambda: L.ceu(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]), ignore_first_n=-1), "ignore_first_n"),
        (lambda: L.ceu(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]), ignore_first_n=2), "no answer token left"),
        (lambda: L.ceu(torch.zeros(1, 3, 1), torch.tensor([[-100, 0, 0]]), ignore_first_n=0), "V=1"),
        (lambda: L.ceu(torch.zeros(1, 3, 4), torch.tensor([[-100, 1.0, 2.0]])), "integer"),
        (lambda: L.pdu_forget(torch.zeros(1, 3, 4), torch.full((1, 3), -100)), "-100 everywhere"),
        (lambda: L.pdu_forget(torch.zeros(3, 4), torch.zeros(1, 3, dtype=torch.long)), r"\(B, T, V\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
