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
register_model(
    "fmnist-resnet", FmnistResNet, input_shape=(1, 28, 28), num_classes=10, default_data="fashion-mnist",
    preprocess=FASHION_MNIST_PREPROCESS,
    recipe=TrainRecipe(epochs=8, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4),
    description="small residual CNN (ResNet-20 style, 16-32-64 channels) trained by `dyno train`",
)
register_model(
    "fmnist-vgg", FmnistVGG, input_shape=(1, 28, 28), num_classes=10, default_data="fashion-mnist",
    preprocess=FASHION_MNIST_PREPROCESS,
    recipe=TrainRecipe(epochs=8, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4),
    description="plain VGG-style conv stack, no skip connections, trained by `dyno train`",
)
