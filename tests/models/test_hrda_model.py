"""HRDASegmenter (spcl.models.hrda): sliding detail inference, fusion, every family's views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.method.hrda import Box
from spcl.models.build import build_model
from spcl.models.hrda import ContextView, DetailCropStudent, HRDASegmenter, HRDASettings
from spcl.models.segmenter import Segmenter

K = 3


class PointwiseSegmenter(Segmenter):
    """Logits of each 4×4 block from that block alone: windows on multiples of 4 see exactly
    what a whole-image pass sees, so sliding and whole-image inference must agree."""

    head_prefixes = ("head.",)

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 5, 1)
        self.head = nn.Conv2d(5, K, 1)
        self.num_classes, self.feature_channels, self.output_stride, self.num_layers = K, 5, 4, 1

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.backbone(F.avg_pool2d(x, 4)))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def layer_id(self, name: str) -> int:
        return 1 if name.startswith("head.") else 0


def _toy(overlap: bool = True) -> HRDASegmenter:
    torch.manual_seed(0)
    settings = HRDASettings(detail_crop=(16, 16), slide_overlap=overlap)
    return HRDASegmenter(PointwiseSegmenter(), settings).eval()


@pytest.mark.parametrize("overlap", [True, False])
def test_sliding_detail_inference_equals_the_whole_image_pass(overlap: bool) -> None:
    model = _toy(overlap)
    x = torch.randn(2, 3, 32, 48)
    whole = model.segmenter(x).logits
    assert torch.allclose(model._slide_detail(x), whole, atol=1e-6)


def test_inference_fuses_the_context_and_the_whole_image_detail() -> None:
    model = _toy()
    x = torch.randn(2, 3, 32, 48)
    inner = model.segmenter
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    context = inner(small)
    att = torch.sigmoid(model.scale_attention(inner.forward_features(small)))
    up = lambda t: F.interpolate(t, size=(8, 12), mode="bilinear", align_corners=False)  # noqa: E731
    expected = up(att) * inner(x).logits + up((1 - att) * context.logits)
    out = model(x)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert torch.equal(out.features, context.features) and out.detail is None


def test_training_views_insert_the_window_and_keep_the_context_elsewhere() -> None:
    model = _toy()
    x = torch.randn(1, 3, 32, 32)
    box = Box(8, 24, 16, 32)
    out = model(x, box=box)
    assert out.logits.shape == (1, K, 8, 8) and out.detail.shape == (1, K, 4, 4)
    assert out.box == box and out.detail_weight == pytest.approx(0.1)
    assert torch.allclose(out.detail, model.segmenter(x[..., 8:24, 16:32]).logits, atol=1e-6)
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    context = F.interpolate(model.segmenter(small).logits, size=(8, 8), mode="bilinear")
    # attention is zero outside the window's context cells (rows 1-2, columns 2-3 of 4×4), so
    # at least one fused cell away from them is the upsampled context alone
    assert torch.allclose(out.logits[..., 0, 0], context[..., 0, 0], atol=1e-6)


def test_detail_crop_student_draws_windows_from_its_generator() -> None:
    model = _toy()
    x = torch.randn(1, 3, 32, 32)
    first = DetailCropStudent(model, model.settings, torch.Generator().manual_seed(1))(x)
    again = DetailCropStudent(model, model.settings, torch.Generator().manual_seed(1))(x)
    assert first.box == again.box and first.box.y1 % 8 == 0
    assert (first.box.y2 - first.box.y1, first.box.x2 - first.box.x1) == (16, 16)


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("daformer_mit_b0", "scale_attention.fuse_layer."),  # the 1×1 fusion of HRDA's head
        ("segformer_mit_b0", "scale_attention.linear_fuse."),
        ("deeplabv2_resnet18", "scale_attention.conv2d_list."),
        ("dinov2_vits14", "scale_attention."),
    ],
)
def test_every_family_trains_and_infers_at_two_scales(name: str, prefix: str) -> None:
    torch.manual_seed(0)
    inner = build_model(name, K, width=4)
    side = 112 if name.startswith("dinov2") else 64
    crop = side // 2
    model = HRDASegmenter(inner, HRDASettings(detail_crop=(crop, crop)))
    assert any(k.startswith(prefix) for k in model.state_dict())
    assert all(k.startswith(("segmenter.", "scale_attention.")) for k in model.state_dict())
    backbone, head = model.param_groups()
    attention = {id(p) for p in model.scale_attention.parameters()}
    assert attention <= {id(p) for p in head} and not attention & {id(p) for p in backbone}
    assert model.backbone is inner.backbone
    for param_name, _ in model.named_parameters():
        assert 0 <= model.layer_id(param_name) <= model.num_layers
    x = torch.randn(2, 3, side, side)
    out = model(x, box=Box(0, crop, crop // 2, crop // 2 + crop))
    assert out.logits.shape[-2:] == (round(side / inner.output_stride),) * 2
    out.logits.mean().backward()
    assert model.scale_attention is not None
    model.eval()
    with torch.no_grad():
        assert model(x).logits.shape == out.logits.shape


def test_context_view_runs_the_segmenter_on_the_downscaled_input() -> None:
    inner = PointwiseSegmenter()
    x = torch.randn(1, 3, 32, 32)
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert torch.equal(ContextView(inner, 0.5)(x).features, inner(small).features)


def test_settings_round_trip_and_refuse_unknown_keys() -> None:
    settings = HRDASettings(detail_crop=(32, 48), attention="single")
    assert HRDASettings.from_mapping(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown HRDA"):
        HRDASettings.from_mapping({"detail_size": [1, 2]})
    model = HRDASegmenter(PointwiseSegmenter(), settings)
    assert model.scale_attention.out_channels == 1  # one attention for every class
