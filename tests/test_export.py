"""The open_clip export builds the same model: features within 1e-4, and zero-shot numbers that
open_clip's own `build_zero_shot_classifier` reproduces exactly."""

import json

import open_clip
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image
from typer.testing import CliRunner

from flip.data.pipeline import eval_transform
from flip.data.tokenizer import Tokenizer
from flip.eval.datasets import load_classification
from flip.eval.features import Runtime
from flip.eval.metrics import classification_metrics
from flip.eval.templates import TEMPLATE_SETS, from_strings
from flip.eval.zeroshot import evaluate_zeroshot, zeroshot_classifier
from flip.export.open_clip import convert_state_dict, export_open_clip, load_exported
from flip.models import FLIP, get_preset
from flipctl.main import app

CAPTIONS = ["a red circle", "a big blue square at the top left and a small green star.", "x",
            "a purple ring on a striped beige background, " * 4]  # the last one is cut at 32 tokens


@pytest.fixture(scope="module")
def model():
    """A tiny model with every parameter perturbed, so that no zero bias hides a mapping mistake."""
    torch.manual_seed(0)
    m = FLIP(get_preset("tiny"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_open_clip(model, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def loaded(exported):
    """(model, preprocess, tokenizer) via open_clip's `local-dir:` route."""
    return load_exported(exported.directory)


def test_open_clip_builds_the_same_model(model, exported):
    open_clip.add_model_config(exported.directory)
    # plain create_model_and_transforms, as CLIP_benchmark calls it: nothing to set afterwards
    oc, _, preprocess = open_clip.create_model_and_transforms(exported.name, pretrained=str(exported.weights))
    oc.eval()
    tokenizer = open_clip.get_tokenizer(exported.name)
    images = torch.randn(5, 3, 64, 64)
    tokens = Tokenizer(32)(CAPTIONS)
    assert torch.equal(tokenizer(CAPTIONS), tokens)
    with torch.no_grad():
        assert (oc.encode_image(images, normalize=True) - model.encode_image(images)).abs().max() < 1e-4
        assert (oc.encode_text(tokens, normalize=True) - model.encode_text(tokens)).abs().max() < 1e-4
        # Unnormalised too: the projections and the logit scale carry over.
        assert (oc.encode_image(images) - model.encode_image(images, normalize=False)).abs().max() < 1e-4
    assert torch.allclose(oc.logit_scale, model.logit_scale)
    image = Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy())
    assert torch.allclose(preprocess(image), eval_transform(64)(image))


def test_local_dir_loading(model, loaded):
    oc, _, tokenizer = loaded
    tokens = tokenizer(CAPTIONS)
    with torch.no_grad():
        assert (oc.encode_text(tokens, normalize=True) - model.encode_text(tokens)).abs().max() < 1e-4


def test_the_pad_mask_exception(tmp_path):
    """A model trained with pad_mask=True exports exactly once use_pad_mask is set, as the export says."""
    import dataclasses

    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, pad_mask=True))
    torch.manual_seed(1)
    masked_model = FLIP(cfg).eval()
    export = export_open_clip(masked_model, tmp_path / "pm")
    assert "use_pad_mask = True" in export.usage()
    oc, _, _ = load_exported(export.directory)
    tokens = Tokenizer(32)(CAPTIONS)
    with torch.no_grad():
        ours = masked_model.encode_text(tokens)
        assert (oc.encode_text(tokens, normalize=True) - ours).abs().max() < 1e-4
        oc.text.use_pad_mask = False  # what plain create_model_and_transforms gives
        assert (oc.encode_text(tokens, normalize=True) - ours).abs().max() > 1e-3


def test_weights_cover_every_open_clip_parameter(model, exported):
    config = json.loads(exported.config.read_text())
    oc = open_clip.CustomTextCLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"])
    assert set(convert_state_dict(model)) == set(oc.state_dict())


def test_zeroshot_matches_open_clip_build_zero_shot_classifier(model, loaded, small_dataset):
    data = load_classification(small_dataset / "zeroshot")
    templates = from_strings(data.templates)
    ours = evaluate_zeroshot(model, data, templates, runtime=Runtime(batch_size=16))

    oc, preprocess, tokenizer = loaded
    with torch.no_grad():
        classifier = build_zero_shot_classifier(oc, tokenizer, data.classnames, templates, num_classes_per_batch=10)
        images = torch.stack([preprocess(Image.open(p)) for p in data.images])
        logits = 100.0 * oc.encode_image(images, normalize=True) @ classifier
    assert (classifier.T - zeroshot_classifier(model, data.classnames, templates)).abs().max() < 1e-4
    assert classification_metrics(logits, data.labels) == ours
    # open_clip's own template sets are used as they are.
    assert len(TEMPLATE_SETS["simple"][1]) == 7 and len(TEMPLATE_SETS["openai"][1]) == 80


def test_export_command(ckpt, tmp_path):
    result = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--format", "open_clip",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"flip-tiny.json", "open_clip_config.json",
                                                               "open_clip_model.safetensors"}
    assert "create_model_and_transforms" in result.output and "use_pad_mask" not in result.output
    # The snippet prints verbatim when piped, whatever the length of its paths: a user copies it.
    lines = result.output.splitlines()
    assert f"open_clip.add_model_config({str(tmp_path / 'out')!r})" in lines
    assert f"    'flip-tiny', pretrained={str(tmp_path / 'out' / 'open_clip_model.safetensors')!r})" in lines
    bad = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--format", "onnx", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "open_clip" in bad.output


def test_a_sigmoid_loss_model_exports_its_bias(tmp_path):
    """open_clip's config key `init_logit_bias` gives its model the parameter; the learnt value travels."""
    m = FLIP(get_preset("tiny").with_loss("sigmoid"))
    with torch.no_grad():
        m.logit_bias.fill_(-7.5)
    oc, _, _ = load_exported(export_open_clip(m, tmp_path / "export").directory)
    assert oc.logit_bias.item() == -7.5
    assert oc.logit_scale.exp().item() == pytest.approx(10.0)
    assert set(convert_state_dict(m)) == set(oc.state_dict())
