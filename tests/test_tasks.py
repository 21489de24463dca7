"""Task families: config errors, initial losses, seed independence, batched
evaluation equal to one seed at a time, and the MNIST networks against
straightforward per-seed implementations."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from l2obench import ConfigError, Task, get_registry
from l2obench.evaluate import loss_and_grad, run

needs_data = pytest.mark.skipif(not os.environ.get("L2OBENCH_DATA_DIR"),
                                reason="L2OBENCH_DATA_DIR is not set (CI sets it to the MNIST files)")


pytestmark = pytest.mark.usefixtures("single_thread")


def _task(family, **config):
    return get_registry().task(family, **config)


# -- configs ---------------------------------------------------------------------

@pytest.mark.parametrize("family,config,fragments", [
    ("mnist-mlp", {"activation": "sigmod"}, ["activation", "'sigmod'", "'sigmoid'", "'relu'", "'tanh'", "'elu'"]),
    ("mnist-mlp", {"hidden": -3}, ["hidden", "-3", "greater than 0"]),
    ("mnist-mlp", {"layers": -1}, ["layers", "-1", "greater than or equal to 0"]),
    ("mnist-mlp", {"hiden": 40}, ["'hiden'", "40", "hidden", "layers", "activation"]),
    ("mnist-mlp", {"batch_size": 0}, ["batch_size", "0", "greater than 0"]),
    ("mnist-mlp", {"digits": "113"}, ["digits", "'113'", "distinct digits"]),
    ("mnist-mlp", {"init": "xavier"}, ["init", "'xavier'", "'gaussian'", "'he'"]),
    ("mnist-conv", {"channels": [4, 0]}, ["channels", "0", "greater than 0"]),
    ("mnist-conv", {"channels": [4, 4, 4, 4, 4]}, ["channels", "at most 4"]),
    ("quadratic", {"distribution": "normal"}, ["distribution", "'normal'", "'gaussian'", "'uniform'"]),
    ("quadratic", {"dim": 0}, ["dim", "0", "greater than 0"]),
])
def test_config_mistake_is_one_line_naming_key_value_and_allowed(family, config, fragments):
    with pytest.raises(ConfigError) as err:
        _task(family, **config)
    message = str(err.value)
    assert "\n" not in message
    assert family in message
    for fragment in fragments:
        assert fragment in message, message


def test_families_are_registered_by_the_project():
    for name in ("quadratic", "mnist-mlp", "mnist-conv"):
        assert get_registry().get("task", name).distribution == "l2obench"


def test_parameter_count_and_groups():
    assert _task("mnist-mlp").dim == 784 * 20 + 20 + 20 * 10 + 10  # the paper's 15,910
    assert _task("mnist-mlp", layers=0).dim == 784 * 10 + 10
    assert _task("mnist-mlp", hidden=40, layers=2, digits="01").dim == 784 * 40 + 40 + 40 * 40 + 40 + 40 * 2 + 2
    mlp = _task("mnist-mlp")
    assert mlp.groups == {"fc": slice(0, mlp.dim)}
    conv = _task("mnist-conv", channels=[2, 3])
    n_conv = (2 * 9 + 2) + (3 * 2 * 9 + 3)
    assert conv.groups == {"conv": slice(0, n_conv), "fc": slice(n_conv, conv.dim)}
    assert conv.dim == n_conv + (3 * 7 * 7 * 32 + 32) + (32 * 10 + 10)


# -- initial state ----------------------------------------------------------------

TASKS = [
    ("quadratic", {}),
    ("quadratic", {"distribution": "uniform", "functions": 3}),
    pytest.param("mnist-mlp", {}, marks=needs_data),
    pytest.param("mnist-mlp", {"layers": 0}, marks=needs_data),
    pytest.param("mnist-mlp", {"hidden": 40, "layers": 2, "activation": "relu"}, marks=needs_data),
    pytest.param("mnist-mlp", {"activation": "gelu", "init": "he", "init_scale": 1.0}, marks=needs_data),
    pytest.param("mnist-conv", {}, marks=needs_data),
    pytest.param("mnist-conv", {"activation": "tanh", "digits": "01234", "batch_size": 16}, marks=needs_data),
]


@pytest.mark.parametrize("family,config", TASKS)
def test_finite_loss_and_gradient_at_init(family, config):
    task = _task(family, **config)
    assert isinstance(task, Task)
    seeds = [0, 7, 3]
    params = task.init(seeds, device="cpu")
    assert params.shape == (3, task.dim) and params.dtype == torch.float32
    loss, grad = loss_and_grad(task, params, next(task.batches("train", seeds, device="cpu")))
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    assert grad.shape == params.shape and torch.isfinite(grad).all() and (grad.abs().sum(1) > 0).all()


@needs_data
@pytest.mark.parametrize("digits", ["0123456789", "01"])
def test_mnist_mlp_starts_near_chance(digits):
    task = _task("mnist-mlp", digits=digits)
    seeds = list(range(8))
    loss = task.loss(task.init(seeds), next(task.batches("train", seeds)))
    assert torch.allclose(loss, torch.full_like(loss, math.log(len(digits))), atol=0.05)


@pytest.mark.parametrize("family,config", TASKS)
def test_each_row_depends_on_its_seed_alone(family, config):
    task = _task(family, **config)
    together = task.init([5, 9, 5])
    assert torch.equal(together[0], task.init([5])[0]) and torch.equal(together[0], together[2])
    assert not torch.equal(together[0], together[1])
    stream, alone = task.batches("validation", [5, 9]), task.batches("validation", [9])
    for _ in range(2):
        batch, single = next(stream), next(alone)
        for part, one in zip(batch, single):
            assert torch.equal(part[1], one[0])


@needs_data
def test_splits_draw_from_different_images():
    task = _task("mnist-mlp", batch_size=64)
    train = next(task.batches("train", [0]))[0]
    for split in ("validation", "test"):
        other = next(task.batches(split, [0]))[0]
        assert not torch.equal(train, other)
    assert torch.equal(train, next(task.batches("train", [0]))[0])


def test_quadratic_gaussian_and_uniform():
    seeds = list(range(4))
    gauss_w, gauss_y = next(_task("quadratic", dim=20).batches("test", seeds))
    unif_w, unif_y = next(_task("quadratic", dim=20, distribution="uniform").batches("test", seeds))
    assert gauss_w.shape == unif_w.shape == (4, 1, 20, 20)
    assert ((unif_w >= 0) & (unif_w < 1)).all() and ((unif_y >= 0) & (unif_y < 1)).all()
    assert abs(float(unif_w.mean()) - 0.5) < 0.05 and abs(float(gauss_w.mean())) < 0.1
    assert (gauss_w < 0).any() and 0.9 < float(gauss_w.std()) < 1.1
    # different splits are different functions, the same split the same
    assert not torch.equal(gauss_w, next(_task("quadratic", dim=20).batches("train", seeds))[0])
    assert torch.equal(gauss_w, next(_task("quadratic", dim=20).batches("test", seeds))[0])


def test_quadratic_loss_is_the_squared_residual():
    task = _task("quadratic", dim=6, functions=2)
    params = task.init([1, 2])
    w, y = next(task.batches("train", [1, 2]))
    theta = params.view(2, 2, 6)
    expected = torch.stack([
        torch.stack([(w[s, f] @ theta[s, f] - y[s, f]).pow(2).sum() for f in range(2)]).mean() for s in range(2)
    ])
    torch.testing.assert_close(task.loss(params, (w, y)), expected)


# -- the MNIST networks against straightforward implementations -------------------

def _mlp_reference(theta, x, y, sizes, act):
    """One seed: the weights laid out as in the paper's naive reference (W1, b1, W2, b2, ...)."""
    h, start = x, 0
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = theta[start:start + n_in * n_out].view(n_in, n_out)
        b = theta[start + n_in * n_out:start + n_in * n_out + n_out]
        start += n_in * n_out + n_out
        h = h @ w + b
        if i < len(sizes) - 2:
            h = act(h)
    return F.cross_entropy(h, y)


@needs_data
@pytest.mark.parametrize("config,act", [({}, torch.sigmoid),
                                        ({"hidden": 12, "layers": 2, "activation": "elu"}, F.elu),
                                        ({"layers": 0}, None)])
def test_mlp_loss_matches_a_per_seed_reference(config, act):
    task = _task("mnist-mlp", init_scale=0.5, **config)
    c = task.config
    sizes = [784] + [c.hidden] * c.layers + [10]
    seeds = [0, 1, 2]
    params = task.init(seeds)
    x, y = next(task.batches("train", seeds))
    expected = torch.stack([_mlp_reference(params[i], x[i], y[i], sizes, act) for i in range(3)])
    torch.testing.assert_close(task.loss(params, (x, y)), expected, rtol=1e-5, atol=1e-6)


@needs_data
def test_conv_loss_matches_a_per_seed_reference():
    task = _task("mnist-conv", channels=[3, 5], hidden=7, activation="tanh")
    seeds = [4, 5]
    params = task.init(seeds)
    x, y = next(task.batches("train", seeds))
    expected = []
    for i in range(2):
        theta, start = params[i], 0

        def take(*shape):
            nonlocal start
            n = math.prod(shape)
            start += n
            return theta[start - n:start].view(*shape)

        h = x[i].view(-1, 1, 28, 28)
        for c_in, c_out in [(1, 3), (3, 5)]:
            h = F.max_pool2d(torch.tanh(F.conv2d(h, take(c_out, c_in, 3, 3), take(c_out), padding=1)), 2)
        h = torch.tanh(h.flatten(1) @ take(5 * 7 * 7, 7) + take(7))
        expected.append(F.cross_entropy(h @ take(7, 10) + take(10), y[i]))
        assert start == task.dim
    torch.testing.assert_close(task.loss(params, (x, y)), torch.stack(expected), rtol=1e-5, atol=1e-6)


@needs_data
def test_digit_subsets_relabel_the_kept_classes():
    task = _task("mnist-mlp", digits="73", batch_size=256)
    x, y = next(task.batches("test", [0]))
    assert set(y.unique().tolist()) == {0, 1}
    from l2obench.datasets import images_to_float

    images, labels = get_registry().dataset("mnist").load("test")
    sevens = images_to_float(images[labels == 7].flatten(1))
    first_seven = x[0][y[0] == 0][0]
    assert (sevens == first_seven).all(1).any()


# -- batched evaluation -------------------------------------------------------------

@needs_data
def test_sixteen_seeds_batched_equal_sixteen_separate_runs_mlp():
    task, adam = _task("mnist-mlp"), get_registry().optimizer("adam", lr=0.03)
    seeds = list(range(16))
    batched = run(adam, task, seeds, steps=20, split="test")
    separate = [run(adam, task, [s], steps=20, split="test") for s in seeds]
    torch.testing.assert_close(batched.losses, torch.cat([t.losses for t in separate]), rtol=1e-6, atol=1e-7)
    assert (batched.diverged_at == -1).all()
    assert float(batched.losses[:, -1].mean()) < 0.8 * math.log(10)  # it learns


@needs_data
def test_batched_seeds_equal_separate_runs_conv():
    """Grouped convolution sums in another order than one network's, hence rtol 1e-4."""
    task, adam = _task("mnist-conv"), get_registry().optimizer("adam", lr=0.01)
    seeds = [3, 1, 4]
    batched = run(adam, task, seeds, steps=8, split="validation")
    separate = torch.cat([run(adam, task, [s], steps=8, split="validation").losses for s in seeds])
    torch.testing.assert_close(batched.losses, separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
])
@pytest.mark.parametrize("family", ["quadratic", pytest.param("mnist-mlp", marks=needs_data),
                                    pytest.param("mnist-conv", marks=needs_data)])
def test_device_is_respected(family, device):
    task = _task(family)
    params = task.init([0, 1], device=device)
    batch = next(task.batches("train", [0, 1], device=device))
    assert params.device.type == device and all(part.device.type == device for part in batch)
    assert task.loss(params, batch).device.type == device
    trajectory = run(get_registry().optimizer("sgd", lr=0.1), task, [0, 1], steps=3, device=device)
    assert trajectory.losses.shape == (2, 3) and torch.isfinite(trajectory.losses).all()
    if device == "cuda":
        cpu = run(get_registry().optimizer("sgd", lr=0.1), task, [0, 1], steps=3, device="cpu")
        torch.testing.assert_close(trajectory.losses, cpu.losses, rtol=1e-3, atol=1e-4)


def test_run_records_the_first_non_finite_step_per_seed():
    task = _task("quadratic", dim=5)
    trajectory = run(get_registry().optimizer("sgd", lr=5.0), task, [0, 1, 2], steps=40)
    for row, at in zip(trajectory.losses, trajectory.diverged_at.tolist()):
        finite = torch.isfinite(row)
        assert at == (-1 if finite.all() else int((~finite).nonzero()[0]))
    assert (trajectory.diverged_at >= 0).any()
    empty = run(get_registry().optimizer("sgd"), task, [0, 1], steps=0)
    assert empty.losses.shape == (2, 0) and empty.diverged_at.tolist() == [-1, -1]
