"""Make the shortcut demo: photos of two classes, one with a shortcut, and a model that uses it.

"horse" photos hold a red blob and "other" photos a blue one, anywhere but the top-left
corner. A third of the horses hold a grey blob and a small white mark in that corner instead
(like the copyright tag that Lapuschkin et al.'s horse classifier had learnt), and so do none
of the others: for those horses the mark is the only evidence. The model of ``model.py`` is
trained here (a few seconds on a CPU); ``camcli summarize`` then finds the marked horses as
the horse class's most suspicious cluster. Usage::

    python configs/shortcut/make_demo.py shortcut-demo

writes ``shortcut-demo/photos/{horse,other}/NN.png`` (48 held-out photos, 64 x 64),
``shortcut-demo/shortcut.pt`` (the weights) and ``shortcut-demo/marked.txt`` (which photos
carry the mark).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 32  # the model's input; the photos are saved at twice that
SCALE = 2
MARK = (1, 6)  # the mark's first and last pixel row and column
HERE = Path(__file__).resolve().parent


def shortcut_data(
    count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(count, 3, SIZE, SIZE)`` in [0, 1], labels (1 horse, 0 other), marked."""
    labels = rng.integers(0, 2, count)
    marked = (labels == 1) & (rng.uniform(size=count) < 1 / 3)
    grey = marked | ((labels == 0) & (rng.uniform(size=count) < 1 / 3))
    colours = np.where(labels[:, None] == 1, [[1.0, 0.1, 0.1]], [[0.1, 0.1, 1.0]])
    colours = np.where(grey[:, None], [[0.6, 0.6, 0.6]], colours)
    centres = rng.uniform(12, SIZE - 6, size=(count, 2))
    images = rng.uniform(0.0, 0.3, size=(count, 3, SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    for i, (cx, cy) in enumerate(centres):
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5**2))
        images[i] += 0.8 * colours[i][:, None, None].astype(np.float32) * blob
    images = np.clip(images, 0, 1)
    first, last = MARK
    images[marked, :, first : last + 1, first : last + 1] = 1.0
    return images, labels, marked


def train(steps: int = 250, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """The demo's model trained on 1,200 photos; its training accuracy."""
    spec = importlib.util.spec_from_file_location("shortcut_model", HERE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, labels, _ = shortcut_data(1200, np.random.default_rng(seed))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and the fastest for so small a model
    try:
        torch.manual_seed(seed)
        model = module.build()
        x = (torch.from_numpy(images) - 0.5) / 0.5
        y = torch.from_numpy(labels).long()
        optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, len(x), (32,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    return model, accuracy


def make_demo(folder: Path, held_out: int = 48) -> dict[str, list[str]]:
    """Write the photos, the weights and the list of marked photos under ``folder``."""
    model, accuracy = train()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "shortcut.pt")
    images, labels, marked = shortcut_data(held_out, np.random.default_rng(1))
    names, shown = [], []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{'horse' if label else 'other'}/{i:02d}.png"
        path = folder / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = (image.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        picture = Image.fromarray(array)
        picture.resize((SIZE * SCALE, SIZE * SCALE), Image.Resampling.NEAREST).save(path)
        names.append(name)
        if marked[i]:
            shown.append(name)
    (folder / "marked.txt").write_text("".join(f"{n}\n" for n in shown), encoding="utf-8")
    print(f"trained to {accuracy:.3f} accuracy; {len(names)} photos, {len(shown)} marked")
    return {"photos": names, "marked": shown}


def main() -> None:
    """The command line: the demo's folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    make_demo(parser.parse_args().folder)


if __name__ == "__main__":
    main()
