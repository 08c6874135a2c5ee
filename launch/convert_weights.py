"""Convert a torchvision/timm ResNet or VGG-16 state dict for jaxmlc.

  python launch/convert_weights.py resnet101.safetensors resnet101.msgpack
  python launch/convert_weights.py vgg16_bn.npz vgg16_bn.msgpack --arch vgg16_bn

IN is a state dict with torch key names (.safetensors or .npz; .pth needs
`pip install jaxmlc[torch]`). OUT (.msgpack) is what `config.model.pretrained`
can name. Get IN on a machine with internet, e.g.
  torchvision.models.resnet101(weights="IMAGENET1K_V2").state_dict()
saved with safetensors.torch.save_file(state_dict, "resnet101.safetensors").
"""
from __future__ import annotations

import argparse
import sys

from jaxmlc.models import BACKBONES, pretrained


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert torch ResNet/VGG-16 weights to a jaxmlc file.")
  parser.add_argument("input", help="state dict: .safetensors, .npz or .pth")
  parser.add_argument("output", help="converted file to write (.msgpack)")
  convertible = sorted(n for n in BACKBONES if n.startswith(("resnet", "vgg")))
  parser.add_argument("--arch", choices=convertible, default=None,
                      help="backbone name; inferred from the keys if omitted")
  args = parser.parse_args(argv)
  if not args.output.endswith(pretrained.CONVERTED_SUFFIX):
    parser.error(f"OUT must end in {pretrained.CONVERTED_SUFFIX}; got "
                 f"{args.output!r}.")
  try:
    state_dict = pretrained.read_state_dict(args.input)
    arch = args.arch or pretrained.infer_arch(state_dict)[0]
    variables = pretrained.convert_state_dict(
        state_dict, args.arch, source=repr(args.input))
  except (ValueError, ImportError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  pretrained.save_converted(variables, args.output, arch=arch)
  count = sum(v.size for v in _leaves(variables["params"]))
  print(f"wrote {args.output}: {arch}, {count:,} parameters")
  return 0


def _leaves(tree):
  for value in tree.values():
    yield from _leaves(value) if isinstance(value, dict) else (value,)


if __name__ == "__main__":
  sys.exit(main())
