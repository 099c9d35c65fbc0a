"""Reference figures for the AdamW test in deberta/src/train.rs: two steps of PyTorch's
torch.optim.AdamW (decoupled weight decay, bias correction) on a 3x2 weight, printed as the
Rust literals the test holds."""
import torch

weight = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.1], [0.2, -0.3]]))
optimizer = torch.optim.AdamW([weight], lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
grads = [torch.tensor([[0.3, -0.2], [0.0, 1.5], [-0.7, 0.05]]),
         torch.tensor([[-0.1, 0.4], [0.2, -0.6], [0.9, 0.0]])]
for grad in grads:
    weight.grad = grad.clone()
    optimizer.step()
print("torch", torch.__version__)
print("[" + ", ".join(f"{v:.9e}" for v in weight.detach().flatten().tolist()) + "]")
