"""Transformers: MLP-hidden and attention-heads units of a ViT, head pruning, the cost model, a search."""

import random

import pytest
import torch
import torchvision
from torch import nn

from autoprune import Evaluator, ImageSet, Proxy, SearchSpace, SpaceConfig, search_policy
from autoprune.core.cost import CostModel, count_params, fvcore_flops
from autoprune.core.graph import HeadPrunedMultiheadAttention, prune_heads
from autoprune.core.prune import Pruner
from autoprune.presets import load_space

BLOCKS = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]


def _vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                                 mlp_dim=128, num_classes=10)
    return model.eval(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class _Toy(nn.Module):
    """Attention asked for its weights (fvcore then counts the attention products), batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 24)
        self.attn = nn.MultiheadAttention(24, 6, batch_first=True)
        self.fc = nn.Linear(24, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, w = self.attn(h, h, h, need_weights=True)
        return self.head(torch.relu(self.fc(h + a)).mean(1)) + w.sum()


def _check_attention(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            inner = m.num_heads * m.head_dim
            assert m.in_proj_weight.shape == (3 * inner, m.embed_dim)
            assert m.in_proj_bias.shape == (3 * inner,)
            assert (m.out_proj.in_features, m.out_proj.out_features) == (inner, m.embed_dim)
            assert m.out_proj.weight.shape == (m.embed_dim, inner)


@pytest.mark.parametrize("config", [load_space("vit"), SpaceConfig(), SpaceConfig(coupled=False)])
def test_units_are_mlp_hidden_and_heads_of_each_block(config):
    model, x = _vit()
    space = SearchSpace.from_model(model, x, config)
    assert space.names == (f"{BLOCKS[0]}.self_attention", f"{BLOCKS[0]}.mlp.0", f"{BLOCKS[1]}.self_attention", f"{BLOCKS[1]}.mlp.0")
    for block in BLOCKS:
        heads, mlp = space.unit(f"{block}.self_attention"), space.unit(f"{block}.mlp.0")
        assert (heads.kind, heads.channels) == ("heads", 4)
        assert dict(heads.members) == {f"{block}.self_attention": "out", f"{block}.self_attention.out_proj": "in"}
        assert (mlp.kind, mlp.channels) == ("channels", 128)
        assert dict(mlp.members) == {f"{block}.mlp.0": "out", f"{block}.mlp.3": "in"}
    assert "conv_proj" not in space.names  # the embedding dimension stays whole


def test_vit_preset_counts_whole_heads_and_rounded_mlp_channels():
    model, x = _vit()
    space = SearchSpace.from_model(model, x, load_space("vit"))
    heads, mlp = space.unit(f"{BLOCKS[0]}.self_attention"), space.unit(f"{BLOCKS[0]}.mlp.0")
    assert heads.allowed_kept == (1, 2, 3, 4) and heads.kept(0.5) == 2
    assert all(k % 8 == 0 for k in mlp.allowed_kept) and mlp.min_kept == 32
    for count, ratio in heads.kept_options:
        assert space.kept({heads.name: ratio})[heads.name] == count
    assert space.kept(space.policy_from_kept({heads.name: 3, mlp.name: 64, **{n: space.unit(n).channels for n in space.names[2:]}})) \
        == {heads.name: 3, mlp.name: 64, space.names[2]: 4, space.names[3]: 128}


def test_pruned_vit_runs_with_consistent_heads_and_keeps_the_least_important_out():
    model, x = _vit()
    space = SearchSpace.from_model(model, x, load_space("vit"))
    pruner = Pruner(model, x, space)
    kept = {f"{BLOCKS[0]}.self_attention": 1, f"{BLOCKS[0]}.mlp.0": 40, f"{BLOCKS[1]}.self_attention": 3, f"{BLOCKS[1]}.mlp.0": 128}
    pruned = pruner.prune(kept)
    with torch.no_grad():
        assert pruned(x.repeat(3, 1, 1, 1)).shape == model(x.repeat(3, 1, 1, 1)).shape == (3, 10)
    _check_attention(pruned)
    modules = dict(pruned.named_modules())
    for block in BLOCKS:
        attn = modules[f"{block}.self_attention"]
        assert isinstance(attn, HeadPrunedMultiheadAttention)
        assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (kept[f"{block}.self_attention"], 16, 64)
        removed = pruner.removed_channels(f"{block}.self_attention", attn.num_heads)
        assert attn.kept_heads == tuple(h for h in range(4) if h not in removed)
    assert modules[f"{BLOCKS[0]}.mlp.0"].out_features == 40 == modules[f"{BLOCKS[0]}.mlp.3"].in_features
    assert isinstance(dict(model.named_modules())[f"{BLOCKS[0]}.self_attention"], nn.MultiheadAttention)  # base unchanged
    assert type(dict(model.named_modules())[f"{BLOCKS[0]}.self_attention"]) is nn.MultiheadAttention


def test_removing_heads_equals_silencing_them_in_the_dense_layer():
    torch.manual_seed(0)
    for batch_first in (True, False):
        attn = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
        silenced = prune_heads(attn, range(4))
        with torch.no_grad():
            silenced.out_proj.weight[:, 8:16] = 0  # head 1
            silenced.out_proj.weight[:, 24:32] = 0  # head 3
            full, _ = attn(x, x, x, need_weights=False)
            same, _ = prune_heads(attn, range(4))(x, x, x, need_weights=False)
            small, weights = prune_heads(attn, [0, 2])(x, x, x, need_weights=True, average_attn_weights=False)
            torch.testing.assert_close(same, full)
            torch.testing.assert_close(small, silenced(x, x, x, need_weights=False)[0])
        assert weights.shape == (2, 2, 7, 7)


@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp", "taylor"])
@pytest.mark.parametrize("case", ["vit", "toy"])
def test_cost_model_equals_fvcore_and_param_count_on_random_policies(case, criterion):
    if case == "vit":
        model, x = _vit()
    else:
        torch.manual_seed(0)
        model, x = _Toy().eval(), torch.randn(2, 9, 12)
    space = SearchSpace.from_model(model, x, SpaceConfig(coupled=False, round_to=1, max_ratio=0.9))
    assert any(u.kind == "heads" for u in space.units)
    pruner = Pruner(model, x, space, criterion, calibration=x)
    for prune in (pruner.prune, None):  # exact with and without the residual calibration
        cost = CostModel(model, x, space, prune)
        assert cost.dense_flops == fvcore_flops(model, x) and cost.dense_params == count_params(model)
        rng = random.Random(0)
        for _ in range(4):
            kept = {u.name: u.kept(rng.uniform(0.0, 0.9)) for u in space.units}
            pruned = pruner.prune(kept)
            _check_attention(pruned)
            assert cost.flops(kept) == fvcore_flops(pruned, x)
            assert cost.params(kept) == count_params(pruned)
            with torch.no_grad():
                assert pruned(x).shape == model(x).shape


def test_search_meets_half_flops_budget():
    model, x = _vit()
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g), (0.0,) * 3, (1.0,) * 3, 1.0)
    val = ImageSet(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g), (0.0,) * 3, (1.0,) * 3, 1.0)
    space = SearchSpace.from_model(model, x, load_space("vit"))
    evaluator = Evaluator(model, x, space, Proxy(calibration=train, held_out=val, calibration_batches=1, batch_size=16))
    result = search_policy(evaluator, "0.5flops", method="random", evals=6, seed=0)
    assert result.best is not None and result.best.status == "ok"
    assert result.best.flops <= 0.5 * evaluator.cost.dense_flops
    pruned = evaluator.build(result.best.policy)
    assert fvcore_flops(pruned, x) == result.best.flops
    _check_attention(pruned)
    kept = space.kept(result.best.policy)
    for block in BLOCKS:
        assert pruned.get_submodule(f"{block}.self_attention").num_heads == kept[f"{block}.self_attention"]
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)
