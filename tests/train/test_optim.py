import torch

from rlhfkit.train.optim import clipped_step


def _one_parameter_optimizer(grad: list[float]):
    param = torch.nn.Parameter(torch.zeros(len(grad)))
    param.grad = torch.tensor(grad)
    return param, torch.optim.SGD([param], lr=1.0)


def test_gradient_is_clipped_to_the_global_norm():
    param, optimizer = _one_parameter_optimizer([3.0, 4.0])
    norm = clipped_step(optimizer, lr=1.0, max_grad_norm=1.0)
    assert abs(norm - 5.0) < 1e-6
    assert (
        torch.allclose(param.detach(), torch.tensor([-0.6, -0.8]), atol=1e-5) and param.grad is None
    )


def test_zero_limit_means_no_clipping_and_still_reports_the_norm():
    param, optimizer = _one_parameter_optimizer([3.0, 4.0])
    norm = clipped_step(optimizer, lr=0.5, max_grad_norm=0.0)
    assert abs(norm - 5.0) < 1e-6
    assert torch.allclose(param.detach(), torch.tensor([-1.5, -2.0]))
