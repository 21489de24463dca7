"""Task families: config errors, initial losses, seed independence, batched
evaluation equal to one seed at a time, and the image networks (MLP, conv net with
and without batch norm, on MNIST, Fashion-MNIST and CIFAR-10-shaped images) against
straightforward per-seed implementations, their gradients included."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cifar10_files import archive, install

from l2obench import ConfigError, DataError, Task, get_registry
from l2obench.evaluate import loss_and_grad, run
from l2obench.plugins.image_configs import ACTIVATIONS

DATA_DIR = os.environ.get("L2OBENCH_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA_DIR, reason="L2OBENCH_DATA_DIR is not set (CI sets it to the data sets)")
needs_fashion = pytest.mark.skipif(not DATA_DIR or not (Path(DATA_DIR) / "fashion-mnist").is_dir(),
                                   reason="L2OBENCH_DATA_DIR has no fashion-mnist/ sub-directory")


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
    ("image-mlp", {"dataset": "cifar10"}, ["dataset", "'cifar10'", "did you mean 'cifar-10'", "fashion-mnist"]),
    ("image-mlp", {"classes": [0, 12]}, ["classes", "[0, 12]", "12 out of range", "'mnist'", "0-9"]),
    ("image-mlp", {"dataset": "fashion-mnist", "classes": [9, 10, 11]}, ["classes", "10, 11", "0-9"]),
    ("image-mlp", {"classes": []}, ["classes", "[]", "at least two classes"]),
    ("image-mlp", {"classes": [4]}, ["classes", "[4]", "at least two classes"]),
    ("image-mlp", {"classes": [1, 2, 1]}, ["classes", "[1, 2, 1]", "1 given more than once"]),
    ("image-mlp", {"classes": [-1, 2]}, ["classes", "-1", "greater than or equal to 0"]),
    ("image-mlp", {"classes": "01234"}, ["classes", "'01234'"]),
    ("image-conv", {"channels": [4, 4, 4, 4, 4]}, ["channels", "[4, 4, 4, 4, 4]", "28x28", "'mnist'",
                                                  "28 -> 14 -> 7 -> 3 -> 1 -> 0", "at most 4"]),
    ("image-conv", {"dataset": "cifar-10", "channels": [2] * 6}, ["channels", "32x32", "'cifar-10'", "at most 5"]),
    ("image-conv", {"kernel": 4}, ["kernel", "4", "1, 3, 5 or 7"]),
    ("image-conv", {"chanels": [4]}, ["'chanels'", "channels", "batch_norm"]),
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
    for name in ("quadratic", "mnist-mlp", "mnist-conv", "image-mlp", "image-conv"):
        assert get_registry().get("task", name).distribution == "l2obench"


def test_config_mistakes_need_no_data_files(tmp_path, monkeypatch):
    """Names, class indices and sizes are checked against the data set's registered
    ``classes`` and ``shape``: a suite is validated without reading its data."""
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path))
    family = get_registry().family("image-conv")
    family.validate(dataset="cifar-10", classes=[5, 6, 7, 8, 9], channels=[16, 16, 16], kernel=5, batch_norm=True)
    with pytest.raises(ConfigError):
        family.validate(dataset="cifar-10", classes=[5, 10])


@needs_data
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
    pytest.param("image-mlp", {"dataset": "fashion-mnist", "classes": [5, 6, 7, 8, 9]}, marks=needs_fashion),
    pytest.param("image-conv", {"channels": [3, 4], "batch_norm": True, "batch_size": 16}, marks=needs_data),
    pytest.param("image-conv", {"dataset": "fashion-mnist", "channels": [2], "kernel": 5, "init": "gaussian",
                                "init_scale": 0.1}, marks=needs_fashion),
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


# -- image families over any data set ------------------------------------------------

@needs_data
@pytest.mark.parametrize("mnist_family,image_family,config", [
    ("mnist-mlp", "image-mlp", {"hidden": 12, "layers": 2, "activation": "relu"}),
    ("mnist-conv", "image-conv", {"channels": [3, 5], "hidden": 7, "batch_size": 16}),
])
def test_mnist_families_are_the_image_families_on_mnist(mnist_family, image_family, config):
    """mnist-* keep their keys (and cells); image-* with dataset="mnist" are the same
    networks, and ``digits="73"`` is ``classes=[7, 3]``, bit for bit."""
    for digits, classes in (("0123456789", None), ("73", [7, 3])):
        old = _task(mnist_family, digits=digits, **config)
        new = _task(image_family, dataset="mnist", classes=classes, **config)
        assert old.dim == new.dim and old.groups == new.groups
        sgd = get_registry().optimizer("sgd", lr=0.1)
        assert torch.equal(run(sgd, old, [0, 4], steps=3, split="validation").losses,
                           run(sgd, new, [0, 4], steps=3, split="validation").losses)


@needs_fashion
def test_class_subsets_keep_only_those_labels_relabelled_in_order():
    from l2obench.datasets import images_to_float

    task = _task("image-mlp", dataset="fashion-mnist", classes=[9, 5, 7], batch_size=512)
    x, y = next(task.batches("test", [0]))
    assert set(y.unique().tolist()) == {0, 1, 2}
    images, labels = get_registry().dataset("fashion-mnist").load("test")
    for new, old in enumerate([9, 5, 7]):
        of_class = images_to_float(images[labels == old].flatten(1))
        first = x[0][y[0] == new][0]
        assert (of_class == first).all(1).any()
    assert task.dim == 784 * 20 + 20 + 20 * 3 + 3


@needs_fashion
def test_meta_train_on_five_labels_and_test_on_the_other_five_is_one_key():
    """The held-out-labels protocol of the paper's CIFAR experiments ("LSTM-sub"): the
    two tasks differ only in ``classes`` and have the same parameter layout."""
    train = _task("image-mlp", dataset="fashion-mnist", classes=[0, 1, 2, 3, 4])
    test = _task("image-mlp", dataset="fashion-mnist", classes=[5, 6, 7, 8, 9])
    assert train.dim == test.dim and train.groups == test.groups
    _, y_train = next(train.batches("train", [0]))
    _, y_test = next(test.batches("test", [0]))
    assert set(y_train.unique().tolist()) == set(y_test.unique().tolist()) == set(range(5))


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """``L2OBENCH_DATA_DIR`` with a small archive in CIFAR-10's binary format (40 images
    a batch), and the registered ``cifar-10`` swapped for one that expects its MD5."""
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path))
    entries = get_registry().entries["dataset"]
    ours = install(tmp_path, archive(per_batch=40))
    monkeypatch.setitem(entries, "cifar-10", replace(entries["cifar-10"], obj=ours))
    return ours


#: the paper's CIFAR-10 net (Sec. 3.3): three conv layers with max pooling, FC 32, ReLU, batch norm
PAPER_CIFAR_NET = {"dataset": "cifar-10", "channels": [16, 16, 16], "kernel": 5, "hidden": 32,
                   "activation": "relu", "batch_norm": True}


def test_the_papers_cifar_net(fake_cifar10):
    task = _task("image-conv", **PAPER_CIFAR_NET)
    conv = (16 * 3 * 25 + 16 + 2 * 16) + 2 * (16 * 16 * 25 + 16 + 2 * 16)
    fc = (16 * 4 * 4 * 32 + 32) + (32 * 10 + 10)
    assert task.groups == {"conv": slice(0, conv), "fc": slice(conv, conv + fc)} and task.dim == conv + fc
    seeds = [0, 1]
    params = task.init(seeds)
    x, y = next(task.batches("train", seeds))
    assert x.shape == (2, 128, 3 * 32 * 32) and y.shape == (2, 128)
    loss, grad = loss_and_grad(task, params, (x, y))
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # lstm-groups: one LSTM for the conv parameters, one for the fully connected ones
    lstm = get_registry().learned("lstm-groups")
    opt = lstm.opt_fn(task.groups)
    updates, _ = opt.update(grad, opt.init(params), params)
    assert updates.shape == params.shape and torch.isfinite(updates).all()


def test_batch_norm_scales_start_at_one_and_shifts_at_zero(fake_cifar10):
    task = _task("image-conv", dataset="cifar-10", channels=[2, 3], batch_norm=True, init="gaussian",
                 init_scale=0.01)
    theta = task.init([3])[0]
    sizes = [(2 * 3 * 9, 2), (2, 2), (3 * 2 * 9, 3), (3, 3)]
    start = 0
    for i, (w, b) in enumerate(sizes):
        weight, bias = theta[start:start + w], theta[start + w:start + w + b]
        if i % 2:  # batch norm
            assert (weight == 1).all() and (bias == 0).all()
        else:
            assert weight.abs().max() < 0.1 and (bias != 0).all()
        start += w + b


def _conv_reference(task, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One seed through torch.nn modules (Conv2d, BatchNorm2d in training mode without
    running statistics, MaxPool2d, Linear) whose weights are taken from ``theta`` in
    the task's layout; returns the mean cross-entropy, differentiable in ``theta``."""
    c = task.config
    C, H, W = task.image
    start = 0

    def take(*shape):
        nonlocal start
        n = math.prod(shape)
        start += n
        return theta[start - n:start].view(*shape)

    act = {"relu": torch.relu, "tanh": torch.tanh}[c.activation]
    h, c_in = x.view(-1, C, H, W), C
    for c_out in c.channels:
        conv = torch.nn.Conv2d(c_in, c_out, c.kernel, padding=c.kernel // 2)
        weight, bias = take(c_out, c_in, c.kernel, c.kernel), take(c_out)
        h = torch.func.functional_call(conv, {"weight": weight, "bias": bias}, (h,))
        if c.batch_norm:
            norm = torch.nn.BatchNorm2d(c_out, track_running_stats=False).train()
            h = torch.func.functional_call(norm, {"weight": take(c_out), "bias": take(c_out)}, (h,))
        h = torch.nn.MaxPool2d(2)(act(h))
        c_in = c_out
    h = act(h.flatten(1) @ take(h[0].numel(), c.hidden) + take(c.hidden))
    k = len(task.classes)
    logits = h @ take(c.hidden, k) + take(k)
    assert start == task.dim
    return F.cross_entropy(logits, y)


@pytest.mark.parametrize("config", [
    {"channels": [3, 5], "hidden": 7, "batch_norm": True, "batch_size": 8},
    {"channels": [2, 2, 4], "kernel": 5, "hidden": 6, "activation": "tanh", "batch_norm": True,
     "classes": [3, 1, 4], "batch_size": 8},
    {"channels": [3], "kernel": 1, "hidden": 5, "batch_norm": False, "batch_size": 8},
])
def test_conv_loss_and_gradient_equal_a_per_seed_reference_on_colour_images(fake_cifar10, config):
    task = _task("image-conv", dataset="cifar-10", init="gaussian", init_scale=0.3, **config)
    seeds = [4, 5, 6]
    params = task.init(seeds)
    x, y = next(task.batches("train", seeds))
    loss, grad = loss_and_grad(task, params, (x, y))
    for i in range(3):
        theta = params[i].clone().requires_grad_(True)
        expected = _conv_reference(task, theta, x[i], y[i])
        (expected_grad,) = torch.autograd.grad(expected, theta)
        torch.testing.assert_close(loss[i], expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad[i], expected_grad, rtol=1e-4, atol=1e-4 * float(expected_grad.abs().max()))


def test_conv_gradient_with_batch_norm_matches_finite_differences(fake_cifar10):
    """gradcheck in float64: the batched network's autograd gradient is the derivative
    of its loss, through the grouped convolution, per-seed batch norm and pooling."""
    task = _task("image-conv", dataset="cifar-10", channels=[2, 2], hidden=3, batch_norm=True,
                 activation="tanh", batch_size=3, init="gaussian", init_scale=0.5, classes=[0, 1])
    seeds = [0, 1]
    params = task.init(seeds).double().requires_grad_(True)
    x, y = next(task.batches("validation", seeds))
    assert torch.autograd.gradcheck(lambda p: task.loss(p, (x.double(), y)), (params,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dataset", ["cifar-10", pytest.param("mnist", marks=needs_data)])
def test_batch_norm_four_seeds_batched_equal_four_one_seed_runs(request, dataset):
    """Batch statistics are per seed's minibatch: a seed's trajectory does not depend
    on which other seeds share its batched call."""
    if dataset == "cifar-10":
        request.getfixturevalue("fake_cifar10")
    task = _task("image-conv", dataset=dataset, channels=[3, 4], hidden=8, batch_norm=True, batch_size=8)
    adam = get_registry().optimizer("adam", lr=0.01)
    seeds = [3, 1, 4, 1_000_005]
    batched = run(adam, task, seeds, steps=6, split="train")
    separate = torch.cat([run(adam, task, [s], steps=6, split="train").losses for s in seeds])
    torch.testing.assert_close(batched.losses, separate, rtol=1e-4, atol=1e-5)
    assert not torch.equal(batched.losses[0], batched.losses[1])


def test_a_class_subset_missing_from_a_split_is_refused_when_the_task_is_built(tmp_path, monkeypatch):
    """The archive's test batch has labels 0-5 only: classes 8 and 9 exist in the data
    set but not in its test split."""
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path))
    entries = get_registry().entries["dataset"]
    monkeypatch.setitem(entries, "cifar-10", replace(entries["cifar-10"], obj=install(tmp_path, archive(per_batch=6))))
    with pytest.raises(ConfigError) as err:
        _task("image-mlp", dataset="cifar-10", classes=[8, 9])
    message = str(err.value)
    assert "\n" not in message and "classes=[8, 9]" in message and "test split" in message and "'cifar-10'" in message


def test_corrupt_or_missing_data_is_refused_when_the_task_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        _task("image-conv", dataset="cifar-10")
    assert "not found" in str(err.value) and str(tmp_path / "cifar-10") in str(err.value)
    install(tmp_path, archive())  # the real MD5 refuses it
    with pytest.raises(DataError) as err:
        _task("image-conv", dataset="cifar-10")
    assert "MD5" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config, seeds", [({"dim": 10}, range(16)), ({"dim": 20}, range(16)),
                                           ({"dim": 7, "functions": 3}, [5, 9])])
def test_the_quadratics_written_out_gradient_is_autograds_bit_for_bit(config, seeds):
    """Runs and meta-training use it instead of autograd; the same operations in autograd's order,
    so the smoke suite's and the paper's quadratic numbers do not move."""
    task = _task("quadratic", **config)
    _assert_written_out_gradient_is_autograds(task, list(seeds), shift=0.5)


def _assert_written_out_gradient_is_autograds(task, seeds, shift=0.0):
    """The task's own ``loss_and_grad`` against autograd through ``loss``, to the bit."""
    assert hasattr(task, "loss_and_grad")
    params = task.init(seeds) + shift
    batch = next(task.batches("train", seeds))
    with torch.enable_grad():
        p = params.clone().requires_grad_(True)
        loss = task.loss(p, batch)
        (grad,) = torch.autograd.grad(loss.sum(), p)
    got_loss, got_grad = loss_and_grad(task, params, batch)
    assert torch.equal(got_loss, loss.detach()) and torch.equal(got_grad, grad)
    assert not got_grad.requires_grad and (grad != 0).any()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_the_mlps_written_out_gradient_is_autograds_bit_for_bit(fake_cifar10, activation, layers):
    """Every activation, no hidden layer to two, three seeds, a class subset: the MLP's
    gradient is autograd's through ``loss``, to the bit, so no MLP number moves."""
    task = _task("image-mlp", dataset="cifar-10", classes=[3, 0, 7], activation=activation, layers=layers,
                 hidden=6, batch_size=5, init_scale=2.0)
    _assert_written_out_gradient_is_autograds(task, [0, 1, 2])


@needs_data
def test_the_papers_mnist_mlps_written_out_gradient_is_autograds_bit_for_bit():
    _assert_written_out_gradient_is_autograds(_task("mnist-mlp"), [0, 5])


@pytest.mark.parametrize("gather_bytes", [1, 5 * 3 * 4 * 12, 1 << 30])
def test_minibatches_gathered_several_steps_at_once_are_those_drawn_step_by_step(monkeypatch, gather_bytes):
    """One step's images at a time, five (64 is not a multiple), or a whole chunk: the
    same minibatches, seed by seed, across the chunks' boundary."""
    from l2obench.api import images_to_float, seed_generator
    from l2obench.plugins import mnist

    monkeypatch.setattr(mnist, "_GATHER_BYTES", gather_bytes)
    images = torch.randint(0, 256, (50, 12), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50,))
    seeds, batch = [3, 0, 8], 4
    stream = mnist.minibatches(images, labels, "train", seeds, batch)
    generators = [seed_generator(s, "batches", "train") for s in seeds]
    for chunk in range(2):
        index = torch.stack([torch.randint(50, (mnist._INDEX_CHUNK, batch), generator=g) for g in generators], 1)
        for rows in index:
            x, y = next(stream)
            assert x.dtype == torch.float32 and x.shape == (3, batch, 12) and y.shape == (3, batch)
            assert torch.equal(x, images_to_float(images[rows])) and torch.equal(y, labels[rows])


@pytest.mark.parametrize("family, config", [("quadratic", {"dim": 6}),
                                            ("image-mlp", {"dataset": "cifar-10", "layers": 2, "hidden": 5})])
def test_written_out_gradients_stay_on_the_params_device(fake_cifar10, family, config):
    """Every tensor of ``loss_and_grad`` is made where the params and the batch are (the
    ``meta`` device stands in for a GPU on machines without one)."""
    task = _task(family, **config)
    params = task.init([0, 1]).to("meta")
    batch = tuple(part.to("meta") for part in next(task.batches("train", [0, 1])))
    loss, grad = task.loss_and_grad(params, batch)
    assert loss.device.type == grad.device.type == "meta"
    assert loss.shape == (2,) and grad.shape == (2, task.dim)
