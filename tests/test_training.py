import pytest
import torch
import torch.nn.functional as F

from vlmlib.training import accuracies, cosine_schedule, parameter_groups, predict, train


def test_schedule_warms_up_then_decays_to_zero():
    values = [cosine_schedule(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and values[-1] < 0.01


def test_train_fits_a_small_problem_and_records_history():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    calls = []

    def loss_fn(step):
        out = model(x)
        return F.cross_entropy(out, y), {"accuracy": (out.argmax(1) == y).float().mean()}

    history = train(model, loss_fn, 200, lr=0.05, after_step=calls.append)
    assert len(history["loss"]) == 200 and len(history["accuracy"]) == 200 and calls == list(range(200))
    assert history["loss"][-1] < 0.3 * history["loss"][0] and history["accuracy"][-1] > 0.95
    assert not model.training
    assert accuracies({"a": predict(model, x, batch_size=50)}, {"a": y})["a"] > 0.95


def test_bad_arguments_and_diverging_losses_are_clear_errors():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train(model, lambda s: model.weight.sum(), 0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train(model, lambda s: model.weight.sum(), 5, lr=-1)
    with pytest.raises(FloatingPointError, match="try a lower learning rate"):
        train(model, lambda s: model.weight.sum() * float("nan"), 5)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(frozen, lambda s: frozen.weight.sum(), 5)
    with pytest.raises(KeyError, match="no labels for"):
        accuracies({"kind": torch.zeros(2, 3)}, {"colour": torch.zeros(2)})


def test_weight_decay_spares_gains_biases_and_scalars():
    """CLIP §2.5 and OpenCLIP: decay weight matrices only; a temperature or a bias is not pulled to 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    scale = torch.nn.Parameter(torch.tensor(2.0))          # like CLIP's logit_scale, unused by the loss
    unused = torch.nn.Parameter(torch.ones(3, 3))          # a weight matrix the loss does not use
    groups = parameter_groups(list(model.parameters()) + [scale, unused], 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model[0].weight), id(model[2].weight), id(unused)}
    x = torch.randn(64, 4)
    train(model, lambda step: model(x).pow(2).mean() + 0 * (scale + unused.sum()), 50, lr=0.01, weight_decay=0.5,
          params=list(model.parameters()) + [scale, unused])
    assert scale.item() == 2.0                    # no decay on a scalar (its gradient is zero)
    assert unused.abs().max().item() < 0.9        # a weight matrix with zero gradient still decays
    with pytest.raises(ValueError, match="weight_decay"):
        train(model, lambda step: model(x).sum(), 1, weight_decay=-1.0)
