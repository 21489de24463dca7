"""The example plugin's own tests: l2obench's conformance kit first, then a few
facts about this plugin that the kit cannot know."""
import ast
import math
from pathlib import Path

import torch

from l2obench import get_registry
from l2obench.evaluate import run
from l2obench.testing import parametrize_with_checks, registered_objects
from l2obench_example import blobs, family, lars, lion


@parametrize_with_checks({"lion": lion(), "lion-decay": lion(weight_decay=0.1), "logistic": family,
                          "blobs-mlp": blobs})
def test_conformance(obj, check):
    check(obj)


# A layer-wise optimizer is given to the kit as its factory, so that the kit can build it
# with groups of its own and see that its updates depend on them.
@parametrize_with_checks({"lars": lars})
def test_layer_wise_conformance(obj, check):
    check(obj)


def test_registered_through_the_entry_point():
    registry = get_registry()
    assert registry.get("optimizer", "lion").distribution == "l2obench-example"
    assert registry.get("task", "logistic-regression").distribution == "l2obench-example"
    assert registry.get("optimizer", "lars").uses_groups
    assert set(registered_objects(distribution="l2obench-example")) == {"lion", "lars", "logistic-regression",
                                                                         "blobs-mlp"}


def test_lion_steps_by_lr_along_the_sign_of_the_gradient():
    opt = lion(lr=0.1)
    params = torch.zeros(2, 3)
    grads = torch.tensor([[1e-20, -3.0, 0.0], [5.0, 2.0, -1e20]])
    updates, _ = opt.update(grads, opt.init(params), params)
    assert torch.equal(updates, -0.1 * torch.sign(grads))


def test_logistic_loss_at_zero_is_log_2():
    task = family.task(features=4, batch_size=8)
    batch = next(task.batches("train", [0, 1]))
    assert batch[0].shape == (2, 8, 4) and batch[1].shape == (2, 8)
    assert torch.allclose(task.loss(torch.zeros(2, task.dim), batch), torch.full((2,), math.log(2)))


def test_splits_share_the_true_weights_but_not_the_examples():
    task = family.task(features=3, samples=50, noise=0.0)
    (x_train, y_train), (x_test, y_test) = task.data(7, "train"), task.data(7, "test")
    assert not torch.equal(x_train, x_test)
    # Noise-free labels of both splits are separated by one hyperplane: fit it on train, check test.
    w = torch.linalg.lstsq(x_train, 2 * y_train - 1).solution
    assert ((x_test @ w > 0).float() == y_test).float().mean() > 0.9


def test_blobs_mlp_is_the_module_with_its_groups_and_buffers():
    task = blobs.task(features=4, classes=3, hidden=5)
    assert task.dim == 4 * 5 + 5 + 2 * 5 + 5 * 3 + 3
    assert list(task.groups) == ["0", "1", "3"]  # the Sequential's layers that have parameters
    batch = next(task.batches("train", [0, 1]))
    assert batch.buffers["1.running_mean"].shape == (2, 5)
    losses = run(get_registry().optimizer("adam", lr=0.05), task, seeds=[0, 1], steps=30).losses
    assert losses[:, -5:].mean() < 0.5 * losses[:, 0].mean()


def test_lars_steps_each_group_by_its_trust_ratio():
    task = family.task(features=2)
    params = torch.tensor([[3.0, 4.0, 0.5]])
    grads = torch.tensor([[10.0, 0.0, -2.0]])
    opt = get_registry().optimizer("lars", task.groups, lr=0.1, momentum=0.0)
    updates, _ = opt.update(grads, opt.init(params), params)
    # weights: ||p|| = 5 along g / ||g||; bias: ||p|| = 0.5 along sign(g)
    assert torch.allclose(updates, torch.tensor([[-0.5, 0.0, 0.05]]))


def test_the_plugin_sees_only_the_public_api():
    """Every l2obench name the plugin uses comes from ``l2obench.api``."""
    package = Path(__import__("l2obench_example").__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            used = [n for n in names if n and n.split(".")[0] == "l2obench"]
            assert all(n == "l2obench.api" for n in used), f"{source.name} imports {used}"
