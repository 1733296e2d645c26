"""Figures: returned as matplotlib Figures (for notebooks), saved when asked, never left open in pyplot."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from lgm.data import toy
from lgm.viz import (
    plot_corruption,
    plot_density_comparison,
    plot_image_panels,
    plot_interpolations,
    plot_latent_norms,
    plot_samples,
    plot_scales,
)

banana = toy.get_density("banana")
images = torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8)
FIGURES = {
    "density": lambda path: plot_density_comparison(
        banana.log_prob, banana.sample(500), banana.bounds, true_log_prob=banana.log_prob, resolution=20, path=path
    ),
    "samples": lambda path: plot_samples(banana.sample(100), banana.bounds, banana.sample(100, seed=1), path=path),
    "panels": lambda path: plot_image_panels([("a", images), ("b", images.float() / 255)], path=path),
    "interpolations": lambda path: plot_interpolations(torch.rand(5, 2, 1, 6, 6), "t", path=path),
    "latent_norms": lambda path: plot_latent_norms(torch.randn(300, 16).norm(dim=1), 16, path=path),
    "scales": lambda path: plot_scales(torch.randn(6, 6), "s", path=path),
    "corruption": lambda path: plot_corruption({"noise": {"levels": [0, 0.1], "bits_per_dim": [1.0, 2.0]}}, path=path),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_are_returned_and_saved_on_request(name, tmp_path):
    figure = FIGURES[name](None)
    assert isinstance(figure, Figure) and figure.axes
    path = tmp_path / f"{name}.png"
    FIGURES[name](path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []
