"""Mixed devices, as a GPU machine meets them: a CPU model fed CUDA batches, features on the GPU with
targets on the CPU, a model on the GPU in a check or a figure. Skipped where there is no CUDA GPU."""
import pytest
import torch

from labkit import checks
from labkit.classify import accuracy, knn, per_class_accuracy
from labkit.device import prepare_model
from labkit.loaders import image_loader
from labkit.model import SimpleMetricEmbedding
from labkit.training import compute_representations, embed
from labkit.viz import stage_outputs
from tests.helpers import tiny_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_cpu_model_embeds_cuda_batches_exactly():
    ds = tiny_dataset("test")
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 8).eval()
    expected, _ = embed(model, image_loader(ds, 7, device="cpu"), progress=False)
    for _ in range(3):  # a copy read before it arrived would differ now and then, not always
        feats, targets = embed(model, image_loader(ds, 7, device="cuda"), progress=False)
        assert feats.device.type == "cpu" and torch.equal(feats, expected)


def test_knn_with_features_on_the_gpu_and_targets_on_the_cpu():
    torch.manual_seed(1)
    bank, bank_y, queries = torch.randn(60, 5), torch.randint(0, 4, (60,)), torch.randn(25, 5)
    assert torch.equal(knn(bank.cuda(), bank_y, queries.cuda(), k=3).cpu(), knn(bank, bank_y, queries, k=3))


def test_stage_outputs_of_a_gpu_model_take_a_cpu_image():
    model = prepare_model(SimpleMetricEmbedding(1, 8).eval(), "cuda")
    image = tiny_dataset("test").images[:1].unsqueeze(1)
    outputs = stage_outputs(model, image)
    assert outputs[-1][1].is_cuda and outputs[-1][1].shape == (1, 8, 1, 1)


def test_check_batch_invariance_decides_a_gpu_model_on_a_cpu_copy(capsys):
    ds = tiny_dataset("test")
    model = prepare_model(SimpleMetricEmbedding(1, 8).eval(), "cuda")
    reps = compute_representations(model, image_loader(ds, 64, device="cuda"), progress=False)
    checks.check_batch_invariance(model, reps, ds)
    assert capsys.readouterr().out == "✔ evaluate gives the same accuracy with batch size 1 and 512\n"
    assert next(model.parameters()).is_cuda and reps.is_cuda  # the student's model and means stay put


def test_accuracies_of_gpu_predictions_against_cpu_targets():
    preds, targets = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert accuracy(preds.cuda(), targets) == accuracy(preds, targets) == 0.75
    assert per_class_accuracy(preds.cuda(), targets, 3) == per_class_accuracy(preds, targets, 3) == [1.0, 1.0, 0.5]
