"""The PyTorch replica's work at its sizes, timed on this machine, to calibrate train_step.py.

Needs torch and torchvision, which the project does not install; run it in a separate
virtual environment:

  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch torchvision
  /tmp/torch/bin/python benchmarks/pytorch_replica_step.py

Times (median of 5 calls after 2 warm-up calls, as the official and PyTorch replica's inference
timers and benchmarks/train_step.py; torch's default threads; the matmul peak is the best):
  backbone    torchvision ResNet-50 on 2 x 512 x 512, stem and layer1 frozen, batch norms
              frozen (FrozenBatchNorm2d), as DETR and the PyTorch replica train it: forward +
              backward
  step        that backbone, a 1x1 projection to 256, nn.Transformer 6+6 layers d 256 FFN
              2048 post-norm (DETR's sizes), the vocabulary head, token cross-entropy over
              101 tokens, AdamW with gradient clipping 0.1: one whole train step
It approximates the PyTorch replica (no auxiliary decoder losses, an untied single-layer head), so
it calibrates the machine, not the replica's exact code. Prints one JSON object last.
"""

import json
import statistics
import time

import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

VOCAB, LENGTH, WIDTH = 2094, 101, 256


def call_seconds(fn, repeats: int = 5) -> list[float]:
  """Seconds of each of `repeats` calls of fn after 2 warm-up calls."""
  for _ in range(2):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  torch.manual_seed(0)
  resnet = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
  body = torch.nn.Sequential(*list(resnet.children())[:-2])
  for name, param in body.named_parameters():
    param.requires_grad_(name.split('.')[0] in ('5', '6', '7'))  # layer2, layer3, layer4
  images = torch.randn(2, 3, 512, 512)

  def backbone():
    body(images).mean().backward()

  proj = torch.nn.Conv2d(2048, WIDTH, 1)
  transformer = torch.nn.Transformer(WIDTH, 8, 6, 6, 2048, dropout=0.1, batch_first=True)
  embed, positions = torch.nn.Embedding(VOCAB, WIDTH), torch.nn.Embedding(LENGTH, WIDTH)
  head = torch.nn.Linear(WIDTH, VOCAB)
  params = [p for p in body.parameters() if p.requires_grad] + [
      p for module in (proj, transformer, embed, positions, head) for p in module.parameters()]
  optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
  tokens = torch.randint(0, VOCAB, (2, LENGTH))
  targets = torch.randint(0, VOCAB, (2, LENGTH))
  causal = torch.nn.Transformer.generate_square_subsequent_mask(LENGTH)

  def step():
    memory = proj(body(images)).flatten(2).transpose(1, 2)  # [2, 256, 256]
    hidden = transformer(memory, embed(tokens) + positions.weight[None], tgt_mask=causal)
    loss = torch.nn.functional.cross_entropy(head(hidden).reshape(-1, VOCAB),
                                             targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.1)
    optimizer.step()

  a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
  matmul = min(call_seconds(lambda: a @ b))
  backbone_times, step_times = call_seconds(backbone), call_seconds(step)
  result = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
            'backbone_seconds': statistics.median(backbone_times),
            'step_seconds': statistics.median(step_times), 'step_seconds_all': step_times,
            'matmul_f32_flops_per_second': 2 * 2048 ** 3 / matmul}
  print(f"backbone fwd+bwd {result['backbone_seconds']:.3f} s, step {result['step_seconds']:.3f}"
        f" s, f32 matmul {result['matmul_f32_flops_per_second'] / 1e9:.0f} GFLOP/s")
  print(json.dumps(result))


if __name__ == '__main__':
  main()
