"""PyTorch twin of encoder/examples/bench_encoder.rs: the same sentence encoder folder, texts,
token budget (head kept) and batch size, sentence-transformers' way (texts sorted by length,
mean pooling over the attention mask, L2 normalisation).
  python3 scripts/bench_torch_encoder.py MODEL_DIR TEXTS.json MAX_TOKENS BATCH THREADS [OUT.json]"""
import json, sys, time
import torch
from transformers import AutoModel, AutoTokenizer

model_dir, texts_path, max_tokens, batch, threads = sys.argv[1:6]
max_tokens, batch, threads = int(max_tokens), int(batch), int(threads)
torch.set_num_threads(threads)
texts = json.load(open(texts_path))
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).eval()
started = time.perf_counter()
order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
out = [None] * len(texts)
with torch.inference_mode():
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                        max_length=max_tokens, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        for i, vector in zip(rows, pooled):
            out[i] = vector
seconds = time.perf_counter() - started
print(f"pytorch {torch.__version__}: {len(texts)} texts in {seconds:.2f} s: "
      f"{len(texts) / seconds:.1f} texts/s (max_tokens {max_tokens}, batch {batch}, {threads} threads)")
if len(sys.argv) > 6:
    json.dump([v.tolist() for v in out[:50]], open(sys.argv[6], "w"))
