"""Images that renderable tasks' test cells leave in the run directory, and the report's grid of them."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from PIL import Image

from l2obench import PluginError, store
from l2obench.artifacts import ARTIFACTS, png_bytes, read_artifacts, render_artifacts
from l2obench.cli import main


@settings(max_examples=20, deadline=None)
@given(arrays(np.float32, (3, 4, 3), elements={"min_value": 0.0, "max_value": 1.0}))
def test_png_keeps_each_pixel_to_the_nearest_level(image):
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(torch.from_numpy(image)))))
    assert decoded.shape == (3, 4, 3)
    assert np.abs(decoded.astype(float) - image * 255).max() <= 0.5 + 1e-3


def test_grey_images_and_wrong_shapes():
    grey = np.asarray(Image.open(io.BytesIO(png_bytes(torch.full((2, 5, 1), 0.5)))))
    assert grey.shape == (2, 5) and (grey == 128).all()
    with pytest.raises(PluginError, match=r"shape \(2, 5, 2\)"):
        png_bytes(torch.zeros(2, 5, 2))


class Pixels:
    """A renderable toy: each seed's two parameters are one 1x2 grey image."""

    def render(self, params):
        return params.view(-1, 1, 2, 1)

    def references(self):
        return {"target": torch.ones(1, 2, 1)}

    def caption(self):
        return "toy"


def test_render_artifacts_names_every_file():
    files = render_artifacts(Pixels(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), [7, 3], "x @ y @ T=1")
    index = json.loads(files["index.json"])
    assert index == {"cell_id": "x @ y @ T=1", "seeds": {"7": "seed-7.png", "3": "seed-3.png"},
                     "references": {"target": "ref-0.png"}, "caption": "toy"}
    assert set(files) == {"index.json", "seed-7.png", "seed-3.png", "ref-0.png"}
    with pytest.raises(PluginError, match="gave 2 images for 3 seeds"):
        render_artifacts(Pixels(), torch.zeros(2, 2), [0, 1, 2], "x")


def test_a_suite_on_neural_art_saves_images_and_the_report_shows_them(tmp_path):
    suite = tmp_path / "art.toml"
    suite.write_text('[suite]\nname = "art"\nseeds = 2\nvalidation_seeds = 1\n\n'
                     '[baselines]\noptimizers = ["sgd", "adam"]\nlr_grid = [0.1, 0.01]\n\n'
                     '[[test]]\ntask = { family = "neural-art", size = 8, width = 1, style = "grass" }\n'
                     'horizons = [3, 5]\n')
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--report", "--no-progress", "--workers", "1"]) == 0
    df = store.load_results(out)
    test = df[df["kind"] == "test"].drop_duplicates("cell_key")
    saved = {r["cell_id"]: read_artifacts(out, r["cell_key"]) for r in test.to_dict("records")}
    longest = {k: v for k, v in saved.items() if k.endswith("T=5")}
    assert len(longest) == 2 and all(a is not None and sorted(a["seeds"]) == [0, 1] for a in longest.values())
    assert all(a["cell_id"] == cell for cell, a in longest.items())
    assert all(v is None for k, v in saved.items() if k.endswith("T=3"))  # read from the T=5 runs' prefix
    tuned = df[df["kind"] == "tune"]["cell_key"].unique()
    assert len(tuned) and not any((out / ARTIFACTS / k).exists() for k in tuned)
    a = next(iter(longest.values()))
    assert set(a["references"]) <= {"content: astronaut", "style: grass"}
    assert np.asarray(Image.open(a["seeds"][0])).shape == (8, 8, 3)
    report = (out / "REPORT.md").read_text()
    grids = [line for line in report.splitlines() if "figures/images-" in line]
    assert len(grids) == 1 and all("T=5" in g for g in grids)
    for g in grids:
        assert (out / g.split("](", 1)[1].rstrip(")")).is_file()
    said = [line for line in report.splitlines() if line.startswith("final images of the first 2 test seeds")]
    assert len(said) == 1 and all("features: a random VGG-19-style net (width 1, seed 0" in s for s in said)
    assert "figures/images-" in (out / "index.html").read_text()


def test_a_task_that_is_not_renderable_leaves_no_images(tmp_path):
    suite = tmp_path / "q.toml"
    suite.write_text('[suite]\nname = "q"\nseeds = 2\nvalidation_seeds = 1\n\n'
                     '[baselines]\noptimizers = ["adam"]\nlr_grid = [0.1]\n\n'
                     '[[test]]\ntask = { family = "quadratic", dim = 3 }\nhorizons = [4]\n')
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--report", "--no-progress", "--workers", "1"]) == 0
    assert not (out / ARTIFACTS).exists() and "figures/images-" not in (out / "REPORT.md").read_text()
