"""The models dyno ships: EfficientNet-Lite0 (ImageNet) and two Fashion-MNIST reference CNNs."""

from __future__ import annotations

from dyno.zoo._models import FmnistResNet, FmnistVGG, build_efficientnet_lite0, efficientnet_lite0_state_dict
from dyno.zoo._preprocess import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImagePreprocess
from dyno.zoo._registry import TrainRecipe, register_model

#: EfficientNet-Lite0 takes RGB scaled to [-1, 1]: (x / 255 - 0.5) / 0.5, after resize 256, crop 224.
EFFICIENTNET_LITE0_PREPROCESS = ImagePreprocess(mode="RGB", resize=256, crop=224, mean=(0.5,) * 3,
                                                std=(0.5,) * 3, interpolation="bilinear")
#: Grayscale, 28x28, normalised with Fashion-MNIST's statistics (for image folders; IDX data is
#: normalised the same way by the dataset itself).
FASHION_MNIST_PREPROCESS = ImagePreprocess(mode="L", resize=28, crop=28, mean=(FASHION_MNIST_MEAN,),
                                           std=(FASHION_MNIST_STD,))

register_model(
    "efficientnet-lite0", build_efficientnet_lite0, input_shape=(3, 224, 224), num_classes=1000,
    default_data="imagenet-samples", preprocess=EFFICIENTNET_LITE0_PREPROCESS,
    pretrained=efficientnet_lite0_state_dict,
    description="EfficientNet-Lite0, ImageNet-trained (4.7M parameters, ReLU6, a real mobile CNN)",
)
# Recipes measured on this project's shared 2-core machine (1 thread, seed 0): 4 epochs of SGD with
# a one-cycle schedule. Random crops with 2 pixels of padding cost 0.8-1 point of top-1 at this few
# epochs (VGG: 91.6% with, 92.5% without), so the only augmentation is left-right flips.
_RECIPE = TrainRecipe(epochs=4, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9,
                      crop_padding=0, hflip=True)

register_model(
    "fmnist-resnet", FmnistResNet, input_shape=(1, 28, 28), num_classes=10, default_data="fashion-mnist",
    preprocess=FASHION_MNIST_PREPROCESS, recipe=_RECIPE,
    description="small residual CNN (ResNet-8: 16-32-64 channels, skips), trained by `dyno train`",
)
register_model(
    "fmnist-vgg", FmnistVGG, input_shape=(1, 28, 28), num_classes=10, default_data="fashion-mnist",
    preprocess=FASHION_MNIST_PREPROCESS, recipe=_RECIPE,
    description="plain VGG-style conv stack (32-64-128 channels, no skips), trained by `dyno train`",
)
