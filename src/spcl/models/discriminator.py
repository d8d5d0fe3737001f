"""Output-space discriminator (AdaptSegNet, Tsai et al. 2018) for SPCL's adversarial warm-up.

SPCL's warm-up (arXiv 2111.12358, Sec. 4.1) aligns source and target in the output space: this fully
convolutional network reads the softmax of a segmenter's (upsampled) logits and scores each location
as source (0) or target (1). Five 4×4 stride-2 convolutions, ``K → ndf → 2ndf → 4ndf → 8ndf → 1``,
with LeakyReLU(0.2) after the first four; the output is raw logits (BCE-with-logits downstream).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DISC_NDF", "OutputDiscriminator"]

DISC_NDF = 64  # AdaptSegNet's base channel count
DISC_KERNEL, DISC_STRIDE, DISC_PADDING = 4, 2, 1  # each conv halves the spatial size
DISC_NEGATIVE_SLOPE = 0.2  # LeakyReLU slope after each hidden conv


class OutputDiscriminator(nn.Module):
    """AdaptSegNet's fully convolutional output-space discriminator.

    Args:
        num_classes: Input channels K (the class probabilities).
        ndf: Channels of the first conv; they double at each of the next three.
        negative_slope: LeakyReLU slope.

    Shape:
        - Input: (B, K, H, W).
        - Output: (B, 1, H/32, W/32) for H, W multiples of 32 (each conv maps n to ⌊n/2⌋).
    """

    def __init__(
        self, num_classes: int, ndf: int = DISC_NDF, negative_slope: float = DISC_NEGATIVE_SLOPE
    ) -> None:
        super().__init__()
        if num_classes < 1 or ndf < 1:
            raise ValueError(f"num_classes and ndf must be positive, got {num_classes} and {ndf}")

        def conv(in_ch: int, out_ch: int) -> nn.Conv2d:
            return nn.Conv2d(in_ch, out_ch, DISC_KERNEL, stride=DISC_STRIDE, padding=DISC_PADDING)

        self.conv1 = conv(num_classes, ndf)
        self.conv2 = conv(ndf, 2 * ndf)
        self.conv3 = conv(2 * ndf, 4 * ndf)
        self.conv4 = conv(4 * ndf, 8 * ndf)
        self.classifier = conv(8 * ndf, 1)
        self.leaky_relu = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.leaky_relu(self.conv1(x))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
