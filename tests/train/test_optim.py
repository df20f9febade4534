import math
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import NumericalFault
from rlhfkit.train.optim import (
    NonFiniteGuard,
    adamw,
    all_finite,
    clip_grad_norm,
    clipped_step,
)


def _one_parameter_optimizer(grad: list[float]):
    param = torch.nn.Parameter(torch.zeros(len(grad)))
    param.grad = torch.tensor(grad)
    return param, torch.optim.SGD([param], lr=1.0)


def _guard(max_skips: int = 2, checkpoints_dir="/nonexistent") -> NonFiniteGuard:
    return NonFiniteGuard(max_skips, checkpoints_dir)


def test_gradient_is_clipped_to_the_global_norm():
    param, optimizer = _one_parameter_optimizer([3.0, 4.0])
    norm = clipped_step(optimizer, lr=1.0, max_grad_norm=1.0, guard=_guard(), step=0)
    assert abs(norm - 5.0) < 1e-6
    assert (
        torch.allclose(param.detach(), torch.tensor([-0.6, -0.8]), atol=1e-5) and param.grad is None
    )


def test_zero_limit_means_no_clipping_and_still_reports_the_norm():
    param, optimizer = _one_parameter_optimizer([3.0, 4.0])
    norm = clipped_step(optimizer, lr=0.5, max_grad_norm=0.0, guard=_guard(), step=0)
    assert abs(norm - 5.0) < 1e-6
    assert torch.allclose(param.detach(), torch.tensor([-1.5, -2.0]))


@pytest.mark.parametrize(
    "scale",
    [
        0.5,  # within the limit: torch multiplies by 1.0, here nothing is multiplied
        2.0,  # above it: scaled
        1.0 - 5e-7,  # below the limit by less than torch's 1e-6: torch still scales, so must we
        math.nan,  # not finite: scaled by nan in both (the update is then skipped)
    ],
)
def test_clip_grad_norm_gives_torchs_gradients_to_the_bit(scale):
    torch.manual_seed(0)
    grads = [torch.randn(7, 5), torch.randn(11)]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
    grads = [g / norm * scale for g in grads]  # global norm `scale`, limit 1
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0).item()
    got = clip_grad_norm(ours, 1.0)
    assert got == expected or (math.isnan(got) and math.isnan(expected))
    for a, b in zip(ours, theirs):
        if math.isnan(scale):
            assert torch.isnan(a.grad).all() and torch.isnan(b.grad).all()
        else:
            assert torch.equal(a.grad, b.grad)
    if scale == 1.0 - 5e-7:
        assert not torch.equal(ours[0].grad, grads[0])  # the boundary case was really scaled


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_gradient_is_not_applied_and_is_counted(bad, caplog):
    param, optimizer = _one_parameter_optimizer([bad, 1.0])
    guard = _guard()
    norm = clipped_step(optimizer, lr=1.0, max_grad_norm=1.0, guard=guard, step=4)
    assert not math.isfinite(norm)
    assert torch.equal(param.detach(), torch.zeros(2)) and param.grad is None
    assert guard.skipped == 1
    assert "step 5" in caplog.text


def test_a_non_finite_loss_skips_the_update_even_with_finite_gradients():
    param, optimizer = _one_parameter_optimizer([1.0, 1.0])
    guard = _guard()
    clipped_step(optimizer, lr=1.0, max_grad_norm=0.0, guard=guard, step=0, loss=math.nan)
    assert torch.equal(param.detach(), torch.zeros(2)) and guard.skipped == 1


def test_past_the_allowed_skips_the_run_stops_naming_step_and_checkpoint(tmp_path):
    guard = _guard(max_skips=1, checkpoints_dir=tmp_path)
    assert not guard.allows(0, math.nan)
    assert guard.allows(1, 2.0)
    with pytest.raises(NumericalFault, match=r"step 3: .*max_nonfinite_skips=1.*none") as err:
        guard.allows(2, math.inf)
    assert err.value.exit_status == 3


def test_a_non_finite_update_on_overflowed_weights_stops_at_once(tmp_path):
    guard = _guard(max_skips=3, checkpoints_dir=tmp_path)
    finite, overflowed = [torch.ones(2)], [torch.tensor([1.0, math.inf])]
    assert not guard.allows(0, math.nan, weights=finite)  # skipped: the weights can recover
    with pytest.raises(NumericalFault, match=r"step 2: .*overflowed them.*none"):
        guard.allows(1, math.nan, weights=overflowed)  # skipping more cannot mend them


def test_all_finite_sees_one_bad_weight():
    model = torch.nn.Linear(3, 2)
    assert all_finite(model)
    with torch.no_grad():
        model.weight[1, 2] = math.nan
    assert not all_finite(model)


def test_adamw_uses_the_fused_kernel_on_cpu_and_takes_the_loops_steps():
    torch.manual_seed(0)
    start = [torch.randn(300, 7), torch.randn(11)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(5)]
    runs = {}
    for name in ("fused", "loop"):
        weights = [w.clone().requires_grad_(True) for w in start]
        if name == "fused":
            optimizer = adamw(weights, lr=1e-2, weight_decay=0.1)
            assert optimizer.defaults["fused"] is True
        else:
            optimizer = torch.optim.AdamW(weights, lr=1e-2, weight_decay=0.1, foreach=False)
        for step_grads in grads:
            for w, g in zip(weights, step_grads):
                w.grad = g.clone()
            optimizer.step()
        runs[name] = [w.detach() for w in weights]
    for fused, loop, first in zip(runs["fused"], runs["loop"], start):
        assert not torch.equal(fused, first)  # it moved: 5 steps of about lr each
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-6)


def test_adamw_falls_back_to_the_loop_for_a_device_without_a_fused_kernel():
    weight = torch.zeros(3, device="meta", requires_grad=True)
    assert not adamw([weight], lr=1e-3, weight_decay=0.0).defaults["fused"]


def test_every_trainer_builds_its_optimizer_through_adamw():
    import rlhfkit

    package = Path(rlhfkit.__file__).parent
    direct = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "optim.py" and "optim.AdamW(" in path.read_text()
    ]
    assert direct == []
