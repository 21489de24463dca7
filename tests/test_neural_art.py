"""The neural-art task family: the conformance kit, the losses against a direct
computation, the feature net's weights file, the missing extra, every kind of optimizer."""
from __future__ import annotations

import sys

import pydantic
import pytest
import torch

from l2obench import ConfigError, Renderable, TaskConfig, TaskFamily, get_registry, seed_generator
from l2obench.evaluate import run
from l2obench.plugins.art import images, neural_art
from l2obench.plugins.art.features import LAYERS, VGG19_WIDTHS, _shapes, torchvision_index
from l2obench.testing import check_task_family

TINY = {"size": 8, "width": 2}


def test_the_family_passes_the_conformance_kit():
    check_task_family(neural_art)


def test_it_is_registered_and_renderable():
    assert get_registry().family("neural-art") is neural_art
    task = get_registry().task("neural-art", **TINY)
    assert isinstance(task, Renderable)
    shown = task.render(task.init([0, 1]))
    assert shown.shape == (2, 8, 8, 3) and shown.min() >= 0 and shown.max() <= 1
    assert set(task.references()) == {"content: astronaut", "style: brick"}
    assert "random VGG-19-style net" in task.caption()


def _direct_gram(f: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of one image's features ``(C, h, w)`` by its definition, element by element."""
    c, h, w = f.shape
    flat = f.reshape(c, h * w).double()
    return torch.tensor([[float(sum(flat[i, p] * flat[j, p] for p in range(h * w))) / (h * w)
                          for j in range(c)] for i in range(c)], dtype=torch.float64)


def test_style_and_content_losses_match_a_direct_computation():
    config = {"size": 8, "width": 1, "style_layers": ["conv1_1", "conv2_1"], "content_layers": ["conv2_1"],
              "content_weight": 0.7, "style_weight": 3.0}
    task = neural_art.task(**config)
    params = task.init([4, 9])
    got = task.loss(params, next(task.batches("test", [4, 9])))
    images_ = params.view(2, 3, 8, 8)
    net = task.net
    for row in range(2):
        x, c, s = (t.unsqueeze(0) for t in (images_[row], task.content, task.style))
        fx, fc, fs = (net.features(t, ["conv1_1", "conv2_1"]) for t in (x, c, s))
        style = sum(((_direct_gram(fx[l][0]) - _direct_gram(fs[l][0])) ** 2).mean() for l in ("conv1_1", "conv2_1")) / 2
        content = ((fx["conv2_1"] - fc["conv2_1"]).double() ** 2).mean()
        assert got[row].item() == pytest.approx(float(0.7 * content + 3.0 * style), rel=1e-4)


def test_adam_makes_the_image_closer_to_its_targets():
    task = neural_art.task(size=16, width=2)
    traj = run(get_registry().optimizer("adam", lr=0.05), task, [0, 1], 30)
    assert (traj.final < 0.5 * traj.losses[:, 0]).all()


def names(kind: str) -> list[str]:
    return sorted(e.name for e in get_registry().all_entries() if e.kind == kind)


@pytest.mark.parametrize("name", names("optimizer"))
def test_every_hand_designed_optimizer_runs_on_it(name):
    reg = get_registry()
    task = reg.task("neural-art", **TINY)
    traj = run(reg.optimizer(name, task.groups), task, [0, 1], 3)
    assert torch.isfinite(traj.losses).all()


@pytest.mark.parametrize("name", names("learned"))
def test_every_learned_optimizer_runs_on_it(name):
    task = neural_art.task(**TINY)
    lopt = get_registry().learned(name)
    traj = run(lopt.opt_fn(task.groups), task, [0, 1], 3)
    assert torch.isfinite(traj.losses).all()


# -- the feature net's weights file ----------------------------------------------------

def vgg19_state(depth: int = len(LAYERS), classifier: bool = True) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's VGG-19 format (keys features.<i>.weight/bias), random values."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for layer, (c_in, c_out) in zip(LAYERS, _shapes(VGG19_WIDTHS, depth)):
        i = torchvision_index(layer)
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(c_out)
    if classifier:
        state["classifier.6.weight"] = torch.zeros(2, 2)
    return state


def test_torchvision_indices():
    assert [torchvision_index(n) for n in ("conv1_1", "conv1_2", "conv2_1", "conv3_1", "conv4_2", "conv5_4")] == \
        [0, 2, 5, 10, 21, 34]


def test_a_vgg19_weights_file_is_read_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    state = vgg19_state(depth=5)
    pt, st = tmp_path / "vgg19.pth", tmp_path / "vgg19.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    losses = []
    for path in (pt, st):
        task = neural_art.task(size=8, weights=str(path))
        assert task.caption().startswith(f"features: VGG-19 from {path.name}")
        assert task.net.convs[0][0].shape == (64, 3, 3, 3)
        losses.append(task.loss(task.init([0]), next(task.batches("test", [0]))))
    assert torch.isfinite(losses[0]).all() and torch.equal(losses[0], losses[1])


def one_line_error(**config) -> str:
    with pytest.raises(ConfigError) as info:
        neural_art.task(**config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_weights_file_errors_are_one_line(tmp_path):
    assert "no such file" in one_line_error(size=8, weights=str(tmp_path / "missing.pth"))
    wrong = vgg19_state(depth=5)
    wrong["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    message = one_line_error(size=8, weights=str(tmp_path / "wrong.pth"))
    assert "'features.5.weight' (layer conv2_1) has shape (128, 32, 3, 3), VGG-19's is (128, 64, 3, 3)" in message
    missing = vgg19_state(depth=2)
    torch.save(missing, tmp_path / "short.pth")
    assert "no tensor 'features.5.weight' (layer conv2_1)" in one_line_error(size=8, weights=str(tmp_path / "short.pth"))
    bare = {k.removeprefix("features."): v for k, v in vgg19_state(depth=5, classifier=False).items()}
    torch.save(bare, tmp_path / "bare.pth")
    assert "lack the 'features.' prefix" in one_line_error(size=8, weights=str(tmp_path / "bare.pth"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")  # a pickled module: code, refused
    assert "without unpickling code" in one_line_error(size=8, weights=str(tmp_path / "model.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot be read" in one_line_error(size=8, weights=str(tmp_path / "junk.pth"))
    assert "random feature net only" in one_line_error(size=8, weights=str(tmp_path / "junk.pth"), width=4)


def test_config_errors_are_one_line():
    message = one_line_error(size=8, content="astronot")
    assert "content" in message and "astronaut" in message
    assert "size" in one_line_error(size=4)
    assert "give size >= 16" in one_line_error(size=8, style_layers=["conv5_1"])


def test_a_missing_extra_is_one_line(monkeypatch):
    images._raw.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    neural_art.validate(**TINY)  # listing and validating need no images
    message = one_line_error(**TINY)
    assert message.endswith("run pip install 'l2obench[art]'") and "scikit-image" in message
    monkeypatch.undo()
    images._raw.cache_clear()
    assert neural_art.task(**TINY).dim == 3 * 8 * 8


# -- the kit's check of renderable tasks -----------------------------------------------

class SquareConfig(TaskConfig):
    side: int = pydantic.Field(2, ge=1, le=3)


class Square:
    """A renderable toy: each seed's parameters are a grey ``side x side`` image."""

    def __init__(self, config):
        self.side, self.dim = config.side, config.side ** 2
        self.groups = {"pixels": slice(0, self.dim)}

    def init(self, seeds, device="cpu"):
        return torch.stack([torch.rand(self.dim, generator=seed_generator(s, "init")) for s in seeds]).to(device)

    def batches(self, split, seeds, device="cpu"):
        while True:
            yield None

    def loss(self, params, batch):
        return (params ** 2).sum(1)

    def render(self, params):
        return params.reshape(-1, self.side, self.side, 1).clamp(0, 1)

    def references(self):
        return {"zero": torch.zeros(self.side, self.side, 1)}

    def caption(self):
        return "grey squares"


def test_the_kit_checks_what_a_renderable_task_renders():
    from l2obench.testing import check_task_render

    check_task_render(TaskFamily(SquareConfig, Square, name="square"))

    def broken(method, body):
        return TaskFamily(SquareConfig, lambda c: type("Broken", (Square,), {method: body})(c), name="broken")

    def fails(family, phrase):
        with pytest.raises(AssertionError, match=phrase):
            check_task_render(family)

    fails(broken("render", lambda self, p: p.reshape(-1, self.side, self.side, 1) * 300), "images in \\[0, 1\\]")
    fails(broken("render", lambda self, p: p.reshape(-1, self.side, self.side, 1)[:1]), "expected [23] finite")
    fails(broken("render", lambda self, p: (p.reshape(-1, self.side, self.side, 1).clamp(0, 1) * 0
                                            + p.mean().clamp(0, 1))), "row 0 alone differs")
    fails(broken("references", lambda self: {"x": torch.ones(2, 2, 2)}), "reference 'x'")
    fails(broken("caption", lambda self: "two\nlines"), "one line")
