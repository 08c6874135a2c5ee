"""PyTorch eager reference for bench_train_step.py: one ResNet-18 train step.

Runs in the bench venv (torch is not a jaxmlc dependency):
  .venv-bench/bin/python bench/torch_step.py --image_size=64 --batch=32

The step: forward (train-mode BatchNorm), BCE-with-logits over C classes,
backward, optimizer update (Adam, or SGD with momentum). ResNet-18 is
written out here (torchvision is not installed): 7x7/2 stem + BN + ReLU +
3x3/2 max-pool, four stages of two BasicBlocks (64, 128, 256, 512), global
average pool, Linear C -- the same network as jaxmlc's "resnet18" + the
baseline head. Prints one JSON line: compile-free step times (median of
--steps after --warmup), examples/sec, the thread count and CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.down = None
    if stride != 1 or cin != cout:
      self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                nn.BatchNorm2d(cout))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
  def __init__(self, num_classes: int, width: int = 64):
    super().__init__()
    self.stem = nn.Sequential(
        nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    blocks, cin = [], width
    for i in range(4):
      cout = width * 2 ** i
      blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2),
                 BasicBlock(cout, cout, 1)]
      cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    return self.fc(x.mean(dim=(2, 3)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--classes", type=int, default=20)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
  parser.add_argument("--channels_last", action="store_true")
  args = parser.parse_args()
  torch.manual_seed(0)
  model = ResNet18(args.classes).train()
  x = torch.randn(args.batch, 3, args.image_size, args.image_size)
  y = (torch.rand(args.batch, args.classes) < 0.1).float()
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if args.optimizer ==
         "adam" else torch.optim.SGD(model.parameters(), lr=0.01,
                                     momentum=0.9))
  loss_fn = nn.BCEWithLogitsLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()   # a host sync, like block_until_ready

  times, cpu0 = [], None
  for i in range(args.warmup + args.steps):
    if i == args.warmup:
      cpu0 = time.process_time()
    t = time.perf_counter()
    step()
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
  median = statistics.median(times)
  print(json.dumps({
      "step_s": median, "min_s": min(times), "ex_per_s": args.batch / median,
      "cpu_s_per_step": (time.process_time() - cpu0) / args.steps,
      "threads": torch.get_num_threads(), "torch": torch.__version__,
      "image_size": args.image_size, "batch": args.batch,
      "optimizer": args.optimizer, "channels_last": args.channels_last,
      "loadavg": os.getloadavg()[0]}))


if __name__ == "__main__":
  main()
