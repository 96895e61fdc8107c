import copy

import torch
from torch.optim.swa_utils import update_bn

from wab.core.evaluate import Evaluator, expected_calibration_error
from wab.core.population import Population
from wab.parts.augment import Normalizer
from wab.parts.data import load_data
from wab.parts.models import model_factory


def test_ece_against_a_hand_computed_value():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 0, 1])
    # bins: 0.9 (correct), 0.8 (wrong), 0.6 (correct), 0.7 (correct), each alone in its bin
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(1 - 0.7)) / 4
    assert abs(expected_calibration_error(probs, y) - expected) < 1e-6


def _setup(n=3):
    data = load_data("digits")
    norm = Normalizer(data.mean, data.std, torch.device("cpu"))
    ev = Evaluator(data, norm, batch_size=100)
    pop = Population(model_factory("cnn", 1, 8, 10, width=4), seeds=range(n))
    return data, norm, ev, pop


def test_bn_recalibration_equals_torch_update_bn():
    data, norm, ev, pop = _setup()
    model = pop.average_model()
    ref = copy.deepcopy(model)
    ev.recalibrate_bn(model)
    update_bn([norm(x) for x in data.train.x.split(100) if len(x) > 1], ref)
    for a, b in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert model.features[0][1].momentum == 0.1  # restored after the cumulative pass


def test_evaluate_reports_every_metric_consistently():
    data, norm, ev, pop = _setup()
    m = ev.evaluate(pop)
    logits = torch.stack([ev.logits(mm) for mm in pop.members])
    accs = (logits.argmax(2) == data.test.y).double().mean(1)
    assert m["individual"] == accs.tolist()
    assert m["ensemble_acc"] == (logits.mean(0).argmax(1) == data.test.y).double().mean().item()
    preds = logits.argmax(2)
    dis = [(preds[i] != preds[j]).double().mean().item() for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert abs(m["disagreement"] - sum(dis) / 3) < 1e-12
    assert m["final_model"] == "avg_bn" and m["final_acc"] == m["avg_bn_acc"]
    means = pop.mean(record=False)[0][0]
    dist = (pop.params[0] - means).norm(dim=1).mean().item()
    assert abs(m["distance_to_mean"] - dist) < 1e-4
    assert not pop.ledger.ops  # evaluating is not communication


def test_bn_recalibration_on_augmented_batches_equals_update_bn_on_those_batches():
    """trainer.bn_recal=augmented: torch's update_bn fed the run's augmented training batches (a
    loader's order and crop/flip from the same seed), the same batches at every recalibration, and
    statistics that differ from the clean images'."""
    import numpy as np

    from wab.core.evaluate import BNRecalibration
    from wab.parts.augment import Augment, Augmenter

    data, norm, ev, pop = _setup()
    augment = Augmenter(Augment(crop_padding=2, flip=True), norm)
    recal = Evaluator(data, norm, batch_size=100, recal=BNRecalibration(augment, batch_size=32, seed=3))
    model = pop.average_model()
    ref, clean = copy.deepcopy(model), copy.deepcopy(model)
    recal.recalibrate_bn(model)
    rng = np.random.default_rng([3, 7_777])
    order = torch.from_numpy(rng.permutation(len(data.train)))
    loader = [augment(data.train.x[i], data.train.y[i], rng).x for i in order.split(32)]
    update_bn([b for b in loader if len(b) > 1], ref)
    for a, b in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    again = recal.recalibrate_bn(copy.deepcopy(model))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), again.buffers()))
    ev.recalibrate_bn(clean)
    mean = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    clean_mean = next(m for m in clean.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    assert (mean - clean_mean).abs().max() > 1e-3  # the padding and flips change the statistics


def test_bn_recal_names_the_run_only_when_augmented_and_refuses_other_values():
    import pytest

    from wab.run.config import compose_config
    from wab.run.lifecycle import plain_config
    from wab.run.records import run_id
    from wab.run.spec import RunSpec

    def rid(*overrides):
        return run_id(plain_config(compose_config(["trainer.threads=1", "device=cpu", *overrides])))

    clean = rid()
    cfg = plain_config(compose_config(["trainer.threads=1", "device=cpu"]))
    del cfg["trainer"]["bn_recal"]  # a record from before the setting
    assert run_id(cfg) == clean == rid("trainer.bn_recal=clean")
    assert rid("trainer.bn_recal=augmented") != clean
    with pytest.raises(ValueError, match="trainer.bn_recal='train' must be one of clean, augmented"):
        RunSpec.from_config(compose_config(["trainer.bn_recal=train"]))
