"""Metric code against hand-computed cases, and the pieces every evaluator shares."""

import pytest
import torch

from flip.eval.features import Masking, Meter, Runtime, encode_images
from flip.eval.linear_probe import ProbeConfig, fit_logistic_regression, select_l2
from flip.eval.metrics import classification_metrics, retrieval_recall, stable_ranks
from flip.models import FLIP, get_preset


# -- classification -----------------------------------------------------------------------------
def test_classification_ties_go_to_the_lower_class_index():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # Sample 0 is class 0 (wins the tie), sample 1 is class 1 (loses it).
    m = classification_metrics(logits, torch.tensor([0, 1]))
    assert m["top1"] == 50.0
    assert m["mean_per_class_recall"] == 50.0  # (1/1 + 0/1) / 2 present classes


def test_fewer_than_five_classes_has_no_top5():
    m = classification_metrics(torch.eye(4), torch.arange(4))
    assert set(m) == {"top1", "mean_per_class_recall"} and m["top1"] == 100.0


def test_top5_and_mean_per_class_recall_by_hand():
    # 6 classes. Labels: 0, 0, 0, 1. The three class-0 samples are right at top-1; the class-1
    # sample has its class ranked 6th (last) -> top1 75, top5 75, balanced (3/3 + 0/1) / 2 = 50.
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5],
        [9.0, 1, 2, 3, 4, 5],
        [9.0, 1, 2, 3, 4, 5],
        [9.0, 0, 2, 3, 4, 5],
    ])
    m = classification_metrics(logits, torch.tensor([0, 0, 0, 1]))
    assert m == {"top1": 75.0, "top5": 75.0, "mean_per_class_recall": 50.0}
    # Class 1 ranked 4th now: a top-5 hit.
    logits[3] = torch.tensor([9.0, 4.5, 2, 3, 8, 7])
    assert classification_metrics(logits, torch.tensor([0, 0, 0, 1]))["top5"] == 100.0


# -- retrieval ----------------------------------------------------------------------------------
def test_retrieval_several_captions_per_image_by_hand():
    # 2 images x 4 captions; captions 0, 1 describe image 0 and 2, 3 image 1.
    scores = torch.tensor([
        [0.1, 0.9, 0.5, 0.95],  # image 0: best caption is 3 (wrong), then 1 (right)
        [0.8, 0.2, 0.7, 0.1],  # image 1: best caption is 0 (wrong), then 2 (right)
    ])
    m = retrieval_recall(scores, torch.tensor([0, 0, 1, 1]), ks=(1, 2))
    assert m["image_to_text_R@1"] == 0.0 and m["image_to_text_R@2"] == 100.0
    # Per caption: 0 -> image 1 first (miss), 1 -> image 0 (hit), 2 -> image 1 (hit), 3 -> image 0 (miss).
    assert m["text_to_image_R@1"] == 50.0 and m["text_to_image_R@2"] == 100.0


def test_retrieval_any_caption_counts_for_image_to_text():
    # Image 0's second caption is its only good one: a hit at R@1 although the first is last.
    scores = torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.1, 0.9]])
    m = retrieval_recall(scores, torch.tensor([0, 0, 1]), ks=(1,))
    assert m["image_to_text_R@1"] == 100.0


def test_retrieval_ties_broken_by_index():
    scores = torch.zeros(2, 4)  # everything tied
    m = retrieval_recall(scores, torch.tensor([0, 0, 1, 1]), ks=(1, 2, 3))
    # image 0's captions come first (hits); image 1's best caption is at rank 2 (a hit from R@3).
    assert (m["image_to_text_R@1"], m["image_to_text_R@2"], m["image_to_text_R@3"]) == (50.0, 50.0, 100.0)
    # every caption ranks image 0 first.
    assert m["text_to_image_R@1"] == 50.0 and m["text_to_image_R@2"] == 100.0


def test_retrieval_matches_a_stable_sort_reference():
    torch.manual_seed(0)
    n_images, per_image = 7, 3
    scores = torch.randint(0, 4, (n_images, n_images * per_image)).float()  # many ties
    owner = torch.arange(n_images).repeat_interleave(per_image)
    m = retrieval_recall(scores, owner, ks=(1, 5))
    order_t = scores.argsort(dim=1, descending=True, stable=True)  # texts per image
    order_i = scores.T.argsort(dim=1, descending=True, stable=True)  # images per text
    for k in (1, 5):
        i2t = [(owner[order_t[i, :k]] == i).any().item() for i in range(n_images)]
        t2i = [(order_i[t, :k] == owner[t]).any().item() for t in range(len(owner))]
        assert m[f"image_to_text_R@{k}"] == pytest.approx(100 * sum(i2t) / len(i2t))
        assert m[f"text_to_image_R@{k}"] == pytest.approx(100 * sum(t2i) / len(t2i))


def test_stable_ranks_chunks_and_row_map():
    scores = torch.tensor([[3.0, 1.0, 3.0], [0.0, 2.0, 1.0]])
    assert stable_ranks(scores, torch.tensor([2, 0]), chunk=1).tolist() == [1, 2]
    assert stable_ranks(scores, torch.tensor([1, 1, 0]), rows=torch.tensor([0, 1, 0])).tolist() == [2, 0, 0]


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_recall(torch.zeros(3, 2), torch.tensor([0, 2]))


# -- features and masking -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FLIP(get_preset("tiny")).eval()


def test_masking_options_are_validated():
    with pytest.raises(ValueError):
        Masking(mask_ratio=1.0)
    with pytest.raises(ValueError, match="either"):
        Masking(mask_ratio=0.5, views=2)
    assert Masking(views=4).mode == "views" and Masking(mask_ratio=0.5).mode == "masked" and Masking().mode == "full"
    assert Masking(views=3).kept_per_view(64) == [len(v) for v in torch.arange(64).tensor_split(3)] == [22, 21, 21]
    assert Masking(mask_ratio=0.75).kept_per_view(196) == [49] and Masking().kept_per_view(64) == [64]


def test_encode_images_modes(model):
    images = torch.randn(10, 3, 64, 64)
    runtime = Runtime(batch_size=4)
    full = encode_images(model, images, Masking(), runtime)
    assert torch.allclose(full, model.encode_image(images), atol=1e-5)
    masked = encode_images(model, images, Masking(mask_ratio=0.5, seed=1), runtime)
    assert torch.equal(masked, encode_images(model, images, Masking(mask_ratio=0.5, seed=1), runtime))  # seeded
    assert not torch.allclose(masked, full, atol=1e-3)
    # Two complementary views: the renormalised mean of the two half-image embeddings.
    views = encode_images(model, images, Masking(views=2, seed=3), Runtime(batch_size=10))
    perm = torch.rand(10, 64, generator=torch.Generator().manual_seed(3)).argsort(dim=1)
    a, b = model.encode_image(images, perm[:, :32]), model.encode_image(images, perm[:, 32:])
    assert torch.allclose(views, torch.nn.functional.normalize(a + b, dim=-1), atol=1e-5)
    assert torch.allclose(views.norm(dim=-1), torch.ones(10), atol=1e-5)


def test_meter_counts_images(model):
    meter = Meter()
    encode_images(model, torch.randn(6, 3, 64, 64), runtime=Runtime(batch_size=4), progress=meter)
    encode_images(model, torch.randn(3, 3, 64, 64), runtime=Runtime(batch_size=4), progress=meter)
    assert meter.items["encoding images"] == 9 and meter.rate("encoding images") > 0


# -- linear probe -------------------------------------------------------------------------------
def test_logistic_regression_separates_and_regularisation_is_chosen_on_val():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels = torch.arange(3).repeat(40)
    features = centres[labels] + torch.randn(120, 8)
    clf = fit_logistic_regression(features[:90], labels[:90], 3, l2=1e-3)
    assert (clf.logits(features[90:]).argmax(1) == labels[90:]).float().mean() > 0.9
    # Huge regularisation shrinks the weights towards zero.
    assert fit_logistic_regression(features, labels, 3, l2=1e3).weight.abs().max() < 0.01
    l2, scores = select_l2(features[:60], labels[:60], features[60:], labels[60:], 3,
                           ProbeConfig(l2_grid=(10.0, 1e-2, 1e-4), refine=False))
    assert scores[l2] == max(scores.values()) and scores[l2] > 0.9
