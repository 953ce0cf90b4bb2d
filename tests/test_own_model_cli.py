"""Your own model and your own images, from the command line: a ConvMixer defined in a file, a checkpoint
saved from DataParallel, an image folder made here; search, export without --env, apply, evaluate, resume,
--save-env, and the bad inputs a newcomer hits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

MODEL_FILE = '''
from torch import nn


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def ConvMixer(dim, depth, kernel_size=3, patch_size=4, n_classes=3):
    """ConvMixer (Trockman and Kolter): patch embedding, depthwise convs inside residuals, pointwise convs."""
    return nn.Sequential(
        nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size), nn.GELU(), nn.BatchNorm2d(dim),
        *[nn.Sequential(
            Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), nn.GELU(),
                                   nn.BatchNorm2d(dim))),
            nn.Conv2d(dim, dim, kernel_size=1), nn.GELU(), nn.BatchNorm2d(dim),
        ) for _ in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(dim, n_classes),
    )


def broken(**kwargs):
    raise ValueError("this factory always fails")


def not_a_module():
    return 42
'''
CLASSES = ("circle", "square", "stripes")
ARGS = "dim=64,depth=2,n_classes=3"


def _image(kind: str, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:16, :16]
    if kind == "circle":
        mask = (y - 8) ** 2 + (x - 8) ** 2 < 25
    elif kind == "square":
        mask = (abs(y - 8) < 5) & (abs(x - 8) < 5)
    else:
        mask = (x // 2) % 2 == 0
    pixels = rng.integers(0, 60, (16, 16, 3))
    pixels[mask] += 180
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file, an image folder (3 classes, train/ and val/) and a checkpoint saved from DataParallel."""
    root = tmp_path_factory.mktemp("own")
    (root / "convmixer.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    tensors, labels = [], []
    for split, count in (("train", 24), ("val", 40)):
        for label, kind in enumerate(CLASSES):
            folder = root / "images" / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = _image(kind, rng)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                if split == "train":
                    tensors.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
                    labels.append(label)
    namespace: dict = {}
    exec(compile(MODEL_FILE, "convmixer.py", "exec"), namespace)  # the user's training script, in short
    torch.manual_seed(0)
    model = namespace["ConvMixer"](dim=64, depth=2, n_classes=3)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x, y = (torch.stack(tensors) - mean) / std, torch.tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    wrapped = nn.DataParallel(model)
    torch.save({"state_dict": wrapped.state_dict(), "epoch": 30}, root / "convmixer.pth")
    return root


def _own(material: Path, *extra: str) -> list[str]:
    return ["--model", str(material / "convmixer.py") + ":ConvMixer", "--model-args", ARGS,
            "--weights", str(material / "convmixer.pth"), "--data", str(material / "images"), *extra]


def test_search_export_apply_evaluate_resume(material, cli, tmp_path):
    code, out, err = cli("search", *_own(material), "--budget", "0.5flops", "--evals", "4", "--out", "run", "--quiet")
    assert code == 0, err
    run = tmp_path / "run"
    record = json.loads((run / "policy.json").read_text())
    config = (run / "config.yaml").read_text()
    assert "imagefolder:" in config and "model_args" in config and "convmixer.py:ConvMixer" in config
    from autoprune.experiment import build_experiment, configure

    exp = build_experiment(configure(None, {"model": str(material / "convmixer.py") + ":ConvMixer",
                                            "model_args": {"dim": 64, "depth": 2, "n_classes": 3},
                                            "weights": str(material / "convmixer.pth"),
                                            "data": str(material / "images")}))
    dense = exp.evaluator.cost.dense_flops
    assert 0.98 * 0.5 * dense <= record["metrics"]["flops"] <= 0.5 * dense  # met, at most 2% of it unused
    assert exp.config.num_classes == 3 and exp.example_inputs.shape == (1, 3, 16, 16)
    assert len(exp.space) >= 1

    for fmt in ("torch-pruning", "nni", "nni2", "csv"):  # no --env: the run says which model it is
        code, out, err = cli("export", "run/policy.json", "--format", fmt)
        assert code == 0 and out.strip(), err
    code, _, err = cli("apply", "run/policy.json", "--out", "pruned.pt")
    assert code == 0, err
    pruned = torch.load(tmp_path / "pruned.pt", weights_only=False)
    assert pruned(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    code, out, err = cli("evaluate", "--policy", "run", "--json")
    assert code == 0, err
    assert json.loads(out)["flops"] == record["metrics"]["flops"]
    code, _, err = cli("search", "--resume", "run", "--quiet")  # finished: nothing more to evaluate
    assert code == 0, err


def test_save_env_makes_the_setup_a_preset(material, cli, tmp_path):
    code, _, err = cli("evaluate", *_own(material), "--save-env", "mine.yaml")
    assert code == 0, err
    code, _, err = cli("search", "--env", "mine.yaml", "--budget", "0.6flops", "--evals", "2", "--out", "r2", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "r2" / "policy.json").read_text())["model"].endswith("convmixer.py:ConvMixer")


def test_bad_input_is_one_line(material, fails, tmp_path):
    model = str(material / "convmixer.py")
    budget = ["--budget", "0.5flops", "--evals", "2"]
    assert "outputs 4 classes but the data has 3" in fails(
        "search", *_own(material)[:2], "--model-args", "dim=64,depth=2,n_classes=4", "--weights",
        str(material / "convmixer.pth"), "--data", str(material / "images"), *budget)
    assert "--data needs --model" in fails("search", "--data", str(material / "images"), *budget)
    assert "K=V" in fails("search", "--model", model + ":ConvMixer", "--model-args", "dim", "--data",
                          str(material / "images"), *budget)
    assert "no_such.py" in fails("search", "--model", str(tmp_path / "no_such.py") + ":Net", "--data",
                                 str(material / "images"), *budget)
    assert "Missing" in fails("search", "--model", model + ":Missing", "--data", str(material / "images"), *budget)
    assert "always fails" in fails("search", "--model", model + ":broken", "--data", str(material / "images"), *budget)
    assert "int" in fails("search", "--model", model + ":not_a_module", "--data", str(material / "images"), *budget)
    other = ["--model", model + ":ConvMixer", "--model-args", "dim=32,depth=2,n_classes=3",
             "--weights", str(material / "convmixer.pth"), "--data", str(material / "images")]
    assert "shape" in fails("search", *other, *budget)  # weights of another width
    flat = tmp_path / "flat"
    for split in ("train", "val"):
        (flat / split).mkdir(parents=True)
        shutil.copy(next((material / "images" / split / "circle").iterdir()), flat / split / "a.png")
    assert "flat" in fails("search", "--model", model + ":ConvMixer", "--model-args", ARGS, "--data", str(flat), *budget)
