"""``module_task``: a Task from an ordinary ``nn.Module`` is seed-batched like a
hand-written family (seeds batched equal seeds one at a time), its gradients are
those of ``torch.autograd`` on the module itself, a learned optimizer meta-trains
on it, and its mistakes are one-line errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2obench import get_registry
from l2obench.api import ConfigError, ModuleBatch, module_task, seed_generator
from l2obench.evaluate import loss_and_grad
from l2obench.metatrain import MetaTrainConfig, meta_train
from l2obench.task import SPLITS

FEATURES, CLASSES, HIDDEN = 6, 3, 5


def two_layer_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))


def arrays(n: int = 64) -> dict:
    out = {}
    for split in SPLITS:
        g = seed_generator(0, "module-task-test", split)
        x = torch.randn(n, FEATURES, generator=g)
        out[split] = (x, (x[:, :CLASSES] * torch.arange(1, CLASSES + 1)).argmax(1))
    return out


@pytest.fixture(scope="module")
def task():
    return module_task(two_layer_bn, arrays(), F.cross_entropy, batch_size=8)


def test_layout_follows_the_modules_named_parameters(task):
    reference = two_layer_bn()
    assert task.dim == sum(p.numel() for p in reference.parameters())
    assert list(task.groups) == ["0", "1", "3"]  # Sequential's layer indices; the Tanh has none
    assert task.groups["1"] == slice(FEATURES * HIDDEN + HIDDEN, FEATURES * HIDDEN + 3 * HIDDEN)
    assert task.buffer_names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_seeds_give_the_modules_own_initialisation(task):
    params = task.init([3, 4])
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=seed_generator(3, "init"))))
    expected = torch.cat([p.detach().reshape(-1) for p in two_layer_bn().parameters()])
    assert torch.equal(params[0], expected)
    assert not torch.equal(params[0], params[1])
    bn = task.unflatten(params)
    assert torch.equal(bn["1.weight"], torch.ones(2, HIDDEN)) and torch.equal(bn["1.bias"], torch.zeros(2, HIDDEN))


def test_eight_seeds_batched_equal_eight_one_seed_runs(task):
    seeds = list(range(10, 18))
    params = task.init(seeds)
    batched = task.batches("train", seeds)
    alone = [task.batches("train", [s]) for s in seeds]
    # SGD, not Adam: the bias before batch norm has a gradient of rounding noise, which Adam would
    # normalise into full steps of different signs
    opt = get_registry().optimizer("sgd", lr=0.1)
    state = opt.init(params)
    singles = [params[i:i + 1].clone() for i in range(8)]
    single_states = [opt.init(p) for p in singles]
    for _ in range(5):
        loss, grad = loss_and_grad(task, params, next(batched))
        for i in range(8):
            l1, g1 = loss_and_grad(task, singles[i], next(alone[i]))
            torch.testing.assert_close(loss[i:i + 1], l1, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad[i:i + 1], g1, rtol=1e-4, atol=1e-6)
            u, single_states[i] = opt.update(g1, single_states[i], singles[i])
            singles[i] = singles[i] + u
        updates, state = opt.update(grad, state, params)
        params = params + updates
    torch.testing.assert_close(params, torch.cat(singles), rtol=1e-4, atol=1e-6)


def test_gradients_equal_autograd_on_the_module_itself(task):
    seeds = [5, 6, 7]
    params = task.init(seeds) + 0.1 * torch.randn(3, task.dim, generator=torch.Generator().manual_seed(1))
    batch = next(task.batches("validation", seeds))
    loss, grad = loss_and_grad(task, params, batch)
    x, y = batch.tensors
    for i in range(3):
        module = two_layer_bn().train()
        with torch.no_grad():
            for (name, p), value in zip(module.named_parameters(), task.unflatten(params[i:i + 1]).values()):
                p.copy_(value[0])
        expected = F.cross_entropy(module(x[i]), y[i])
        expected.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
        torch.testing.assert_close(loss[i], expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad[i], flat, rtol=1e-4, atol=1e-6)


def test_the_loss_is_pure_and_buffers_stay_the_seeds_own(task):
    seeds = [1, 2]
    params = task.init(seeds)
    batch = next(task.batches("train", seeds))
    before = {k: v.clone() for k, v in batch.buffers.items()}
    first, second = task.loss(params, batch), task.loss(params, batch)
    assert torch.equal(first, second)
    assert all(torch.equal(before[k], batch.buffers[k]) for k in before)
    assert isinstance(batch, ModuleBatch) and batch.buffers["1.running_var"].shape == (2, HIDDEN)


def test_a_learned_optimizer_meta_trains_on_it(task):
    torch.manual_seed(0)
    lopt = get_registry().learned("lstm", hidden=8, layers=1)
    config = MetaTrainConfig(horizon=20, unroll=10, epochs=2, episodes_per_epoch=8, meta_batch=4, lr=0.01,
                             validation_seeds=4)
    result = meta_train(lopt, task, config, progress=False)
    losses = [row["meta_loss"] for row in result.history]
    assert result.skipped == 0
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    assert result.best_val < result.validation[0]


def test_a_batches_function_is_the_tasks_stream():
    def batches(split, seeds, device):
        gens = [seed_generator(s, "stream", split) for s in seeds]
        while True:
            x = torch.stack([torch.randn(4, FEATURES, generator=g) for g in gens])
            yield x, x[..., :CLASSES].argmax(-1)

    task = module_task(lambda: nn.Linear(FEATURES, CLASSES), batches, F.cross_entropy)
    assert task.groups == {"weight": slice(0, FEATURES * CLASSES),
                           "bias": slice(FEATURES * CLASSES, FEATURES * CLASSES + CLASSES)}
    loss = task.loss(task.init([0, 1]), next(task.batches("test", [0, 1])))
    assert loss.shape == (2,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("make, match", [
    (lambda: module_task(two_layer_bn, {"train": arrays()["train"]}, F.cross_entropy, batch_size=4),
     "no split 'validation', 'test'"),
    (lambda: module_task(two_layer_bn, arrays(), F.cross_entropy), "batch_size"),
    (lambda: module_task(lambda: "not a module", arrays(), F.cross_entropy, batch_size=4), "not a torch.nn.Module"),
    (lambda: module_task(nn.ReLU, arrays(), F.cross_entropy, batch_size=4), "no parameters"),
])
def test_mistakes_are_one_line_config_errors(make, match):
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_an_operation_vmap_cannot_batch_is_named_in_one_line():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(FEATURES, 4, batch_first=True), nn.Linear(4, CLASSES)

        def forward(self, x):
            return self.head(self.lstm(x.unsqueeze(1))[0][:, -1])

    task = module_task(Recurrent, arrays(), F.cross_entropy, batch_size=4)
    with pytest.raises(ConfigError, match="vmap.*lstm") as info:
        task.loss(task.init([0]), next(task.batches("train", [0])))
    assert "\n" not in str(info.value)


def _accuracy(logits, y):
    return (logits.argmax(-1) == y).float().mean()


def test_heldout_metrics_equal_a_direct_computation_on_the_module():
    data = arrays()
    task = module_task(two_layer_bn, data, F.cross_entropy, batch_size=8, eval_examples=20,
                       metrics={"accuracy": _accuracy})
    assert task.metrics == ("loss", "accuracy")
    params = task.init([5, 6]) + 0.1
    got = task.evaluate(params, "test")
    x, y = data["test"][0][:20], data["test"][1][:20]
    for row in range(2):
        module = two_layer_bn().train()
        torch.nn.utils.vector_to_parameters(params[row], module.parameters())
        with torch.no_grad():  # chunks of the minibatch size, batch norm on each chunk's statistics
            parts = [(module(x[i:i + 8]), y[i:i + 8]) for i in range(0, 20, 8)]
        loss = sum(F.cross_entropy(o, t) * len(t) for o, t in parts) / 20
        acc = sum(_accuracy(o, t) * len(t) for o, t in parts) / 20
        assert torch.allclose(got["loss"][row], loss, atol=1e-6)
        assert torch.allclose(got["accuracy"][row], acc, atol=1e-6)
    one = task.evaluate(params[1:], "test")
    assert torch.allclose(one["loss"], got["loss"][1:], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"metrics": {"accuracy": _accuracy}}, "need eval_examples"),
    ({"eval_examples": 0}, "eval_examples=0"),
    ({"eval_examples": 5, "metrics": {"loss": _accuracy}}, "must not name 'loss'"),
])
def test_heldout_mistakes_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        module_task(two_layer_bn, arrays(), F.cross_entropy, batch_size=8, **kwargs)
    assert "\n" not in str(info.value)
