"""Reference figures for the optimizer and loss tests in neural/src/train.rs, from PyTorch,
printed as the Rust literals the tests hold:
- two steps of torch.optim.AdamW (decoupled weight decay, bias correction) on a 3x2 weight;
- torch.nn.utils.clip_grad_norm_ on two gradients (global L2 norm, max_norm 1.0);
- torch.nn.CrossEntropyLoss(label_smoothing=0.1) on two rows of logits."""
import torch

print("torch", torch.__version__)

weight = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.1], [0.2, -0.3]]))
optimizer = torch.optim.AdamW([weight], lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
grads = [torch.tensor([[0.3, -0.2], [0.0, 1.5], [-0.7, 0.05]]),
         torch.tensor([[-0.1, 0.4], [0.2, -0.6], [0.9, 0.0]])]
for grad in grads:
    weight.grad = grad.clone()
    optimizer.step()
print("adamw [" + ", ".join(f"{v:.9e}" for v in weight.detach().flatten().tolist()) + "]")

a = torch.nn.Parameter(torch.zeros(2, 2))
b = torch.nn.Parameter(torch.zeros(3))
a.grad = torch.tensor([[0.6, -0.8], [1.2, 0.0]])
b.grad = torch.tensor([0.5, -0.25, 2.0])
norm = torch.nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
print(f"clip norm {norm.item():.9e}")
print("clip [" + ", ".join(f"{v:.9e}" for v in torch.cat([a.grad.flatten(), b.grad]).tolist()) + "]")

logits = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.3, -1.2]])
labels = torch.tensor([0, 2])
loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
print(f"smoothed loss {loss.item():.9e}")
