"""The pruner: shapes, determinism, rebuild equality, and exactness of the option-A shortcut pruning."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from autoprune.core.evaluator import Evaluator
from autoprune.core.policy import PolicyRecord
from autoprune.core.proxy import Proxy
from autoprune.core.prune import CRITERIA, Pruner
from autoprune.core.space import SearchSpace, SpaceConfig
from autoprune.errors import ConfigError
from autoprune.zoo.cifar_resnet import ChannelScatterShortcut
from autoprune.zoo.digits import load_digits_split
from tests.conftest import WEIGHTS_DIR, needs_weights
from tests.helpers import NETWORKS, network

NAMES = [pytest.param(n, marks=needs_weights) if n in ("resnet20", "resnet56") else n for n in NETWORKS]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_pruned_shapes_and_rebuild_from_policy_file(name, tmp_path):
    model, x = network(name, WEIGHTS_DIR)
    space = SearchSpace.from_model(model, x, SpaceConfig())
    pruner = Pruner(model, x, space)
    kept = {u.name: u.kept(0.3 + 0.4 * (i % 2)) for i, u in enumerate(space.units)}
    pruned = pruner.prune(kept)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    modules = dict(pruned.named_modules())
    for unit in space.units:
        root = modules[unit.name]
        assert (root.out_features if isinstance(root, torch.nn.Linear) else root.out_channels) == kept[unit.name]

    record = PolicyRecord(ratios=dict(space.policy_from_kept(kept)),
                          channels={u.name: {"dense": u.channels, "kept": kept[u.name]} for u in space.units},
                          model=name, input_shape=list(x.shape), criterion="l1", round_to={})
    record.save(tmp_path / "policy.json")
    loaded = PolicyRecord.load(tmp_path / "policy.json")
    assert loaded == record
    assert space.kept(loaded.policy) == kept  # ratios reproduce the channel counts exactly
    rebuilt = Pruner(model, x, space).prune(space.kept(loaded.policy))
    assert _same(rebuilt, pruned)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))


def test_base_model_is_never_changed():
    model, x = network("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = SearchSpace.from_model(model, x, SpaceConfig())
    Pruner(model, x, space).prune({u.name: u.min_kept for u in space.units})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_criterion_removes_least_important_channels(criterion):
    model, x = network("digits-cnn")
    space = SearchSpace.from_model(model, x, SpaceConfig())
    pruner = Pruner(model, x, space, criterion, calibration=_digits()[0])  # images only used by taylor
    conv = model.features[0]
    removed = pruner.removed_channels("features.0", kept=20)
    assert len(removed) == 12 and removed == sorted(removed)
    if criterion == "l1":  # the group's L1 is dominated here by nothing exotic: check order is by score
        norms = conv.weight.detach().abs().flatten(1).sum(1)
        assert norms[removed].mean() < norms[[c for c in range(32) if c not in removed]].mean()


@needs_weights
def test_coupled_residual_pruning_is_exact_when_removed_channels_are_dead():
    """Silence in the dense network the channels a coupled policy removes; both must compute the same function.

    A removed residual-stream channel is silenced by zeroing its batch-norm outputs and by dropping the
    option-A shortcut's copy into it.
    """
    model, x = network("resnet20", WEIGHTS_DIR)
    space = SearchSpace.from_model(model, x, SpaceConfig(coupled=True))
    pruner = Pruner(model, x, space)
    kept = {u.name: u.kept(0.5) for u in space.units}
    pruned = pruner.prune(kept)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for unit in space.units:
            dead = pruner.removed_channels(unit.name, kept[unit.name])
            for member, role in unit.members:
                module = modules[member]
                if isinstance(module, torch.nn.BatchNorm2d):  # silence the channel at its source
                    module.weight[dead] = 0
                    module.bias[dead] = 0
                if isinstance(module, ChannelScatterShortcut) and role == "out":
                    alive = ~torch.isin(module.dst, torch.tensor(dead))
                    module.src, module.dst = module.src[alive], module.dst[alive]
        assert torch.allclose(pruned.eval()(x), model.eval()(x), atol=1e-4)


def _digits(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits_split("train").batch(slice(0, n))


def _digits_setup():
    model, x = network("digits-cnn")
    return model, x, SearchSpace.from_model(model, x, SpaceConfig())


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_registered_criterion_prunes_to_the_policy(criterion):
    model, x, space = _digits_setup()
    pruner = Pruner(model, x, space, criterion, calibration=_digits()[0])
    assert pruner.criterion == criterion
    kept = {u.name: u.kept(0.25 + 0.5 * (i % 2)) for i, u in enumerate(space.units)}
    pruned = pruner.prune(kept)
    modules = dict(pruned.named_modules())
    assert {u.name: modules[u.name].out_channels for u in space.units} == kept
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)


def test_lamp_and_taylor_choose_other_channels_than_l1():
    model, x, space = _digits_setup()
    images, labels = _digits()
    half = {u.name: u.channels // 2 for u in space.units}
    removed = {c: {n: Pruner(model, x, space, c, calibration=images, calibration_labels=labels).removed_channels(n, k)
                   for n, k in half.items()} for c in ("l1", "l2", "lamp", "taylor")}
    assert any(removed["lamp"][n] != removed["l1"][n] for n in half)
    assert any(removed["taylor"][n] != removed["l1"][n] for n in half)
    assert removed["lamp"] == removed["l2"]  # LAMP's per-layer normalisation keeps the L2 order inside a unit

    # taylor on the last conv: mean over its group (conv output, fc input) of |w * dL/dw|, the loss on the labels
    dense = copy.deepcopy(model)
    F.cross_entropy(dense(images), labels).backward()
    conv, fc = dense.features[13], dense.fc
    score = ((conv.weight * conv.weight.grad).abs().flatten(1).sum(1) + (fc.weight * fc.weight.grad).abs().sum(0)) / 2
    assert removed["taylor"]["features.13"] == sorted(torch.argsort(score)[:64].tolist())


def test_taylor_loss_without_labels_is_on_own_predictions():
    model, x, space = _digits_setup()
    images, _ = _digits()
    with torch.no_grad():
        own = model(images).argmax(1)
    plain = Pruner(model, x, space, "taylor", calibration=list(images.split(32)))
    labelled = Pruner(model, x, space, "taylor", calibration=images, calibration_labels=own)
    assert plain._order == labelled._order


def test_importance_object_is_accepted_and_recorded_by_class_name(tmp_path):
    model, x, space = _digits_setup()
    kept = {u.name: u.kept(0.5) for u in space.units}
    custom = Pruner(model, x, space, tp.importance.GroupMagnitudeImportance(p=1))
    assert custom.criterion == "GroupMagnitudeImportance"
    assert _same(custom.prune(kept), Pruner(model, x, space, "l1").prune(kept))
    record = PolicyRecord(ratios=dict(space.policy_from_kept(kept)),
                          channels={u.name: {"dense": u.channels, "kept": kept[u.name]} for u in space.units},
                          model="digits-cnn", input_shape=list(x.shape), criterion=custom.criterion, round_to={})
    record.save(tmp_path / "policy.json")
    assert PolicyRecord.load(tmp_path / "policy.json").criterion == "GroupMagnitudeImportance"


def test_unknown_criterion_names_the_valid_ones():
    model, x, space = _digits_setup()
    with pytest.raises(ConfigError, match="'nope'.*l1, l2, bn_scale, lamp, taylor"):
        Pruner(model, x, space, "nope")


def test_taylor_without_calibration_images_is_a_clear_error():
    model, x, space = _digits_setup()
    for calibration in (None, [], torch.empty(0, 1, 8, 8)):
        with pytest.raises(ConfigError, match="criterion 'taylor' needs calibration images"):
            Pruner(model, x, space, "taylor", calibration=calibration)
    proxy = Proxy(load_digits_split("train"), load_digits_split("val"), calibration_batches=0)
    with pytest.raises(ConfigError, match="criterion 'taylor' needs calibration images"):
        Evaluator(model, x, space, proxy, "taylor")


def test_taylor_leaves_the_dense_model_and_its_gradients_alone():
    model, x, space = _digits_setup()
    images, _ = _digits()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)  # a stale gradient the user left behind
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    order = Pruner(model, x, space, "taylor", calibration=images)._order
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert not model.features[0].weight.requires_grad
    fresh, _, _ = _digits_setup()  # the stale gradient does not leak into the scores
    assert Pruner(fresh, x, space, "taylor", calibration=images)._order == order


def test_evaluator_gives_taylor_the_proxy_calibration_images():
    model, x, space = _digits_setup()
    proxy = Proxy(load_digits_split("train"), load_digits_split("val"), calibration_batches=2, batch_size=32)
    evaluator = Evaluator(model, x, space, proxy, "taylor")
    direct = Pruner(model, x, space, "taylor", calibration=proxy.calibration)
    assert evaluator.pruner.criterion == "taylor" and evaluator.pruner._order == direct._order
    assert evaluator.pruner._order != Pruner(model, x, space, "l1")._order
