"""Gradient shapes of real models, for the fusion benchmarks (no framework needed)."""


def resnet50():
    """torchvision's ResNet-50 parameters in registration order: 161 tensors, 25,557,032
    values (53 convolutions, 53 batch norms with weight and bias, the classifier)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (width * 4, width, 1, 1), (width * 4,), (width * 4,)]
            if b == 0:
                shapes += [(width * 4, inplanes, 1, 1), (width * 4,), (width * 4,)]
            inplanes = width * 4
    shapes += [(1000, 2048), (1000,)]
    return shapes


def transformer(layers=6, d=512, vocab=32000, ctx=1024):
    """A GPT-style decoder: embeddings, then per layer two LayerNorms (weight, bias), the
    fused QKV projection, the output projection and the MLP, then the final LayerNorm. Many
    small LayerNorm and bias tensors next to large matrices."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def count(shapes):
    total = 0
    for s in shapes:
        n = 1
        for k in s:
            n *= k
        total += n
    return total


assert len(resnet50()) == 161 and count(resnet50()) == 25_557_032
