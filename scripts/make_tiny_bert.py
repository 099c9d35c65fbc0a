"""Makes the tiny random BERT sentence encoder the encoder tests load
(tests/fixtures/tiny-bert/) and the embeddings Hugging Face computes for a few texts
(tests/fixtures/tiny-bert-expected.json): mean pooling over the attention mask, L2-normalised,
texts cut to 16 tokens, as sentence-transformers does. Needs torch, transformers, tokenizers."""
import json, os, sys
import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
out = os.path.join(root, "tiny-bert")
os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)

corpus = [
    "Which answer is better? The first one explains the steps clearly.",
    "The second answer refuses: I'm sorry, but I cannot help with that request.",
    "Here is a list: first, second, third. Code: print('hello world')",
    "Ünïcode text, numbers 12345 and punctuation!? are tokenized too.",
    "A longer answer with some detail about gradient descent and learning rates.",
] * 3
tokenizer = BertWordPieceTokenizer(lowercase=True)
tokenizer.train_from_iterator(corpus, vocab_size=160, min_frequency=1,
                              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
from tokenizers.processors import BertProcessing
tokenizer.post_processor = BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                          ("[CLS]", tokenizer.token_to_id("[CLS]")))
tokenizer.save(os.path.join(out, "tokenizer.json"))

torch.manual_seed(0)
config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                    pad_token_id=0)
model = BertModel(config, add_pooling_layer=False).eval()
model.save_pretrained(out, safe_serialization=True)
json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
           "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
           "pooling_mode_mean_sqrt_len_tokens": False},
          open(os.path.join(out, "1_Pooling", "config.json"), "w"), indent=2)

fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"),
                               pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                               unk_token="[UNK]")
texts = [
    "Which answer is better?",
    "I'm sorry, but I cannot help with that request.",
    "A longer answer with some detail about gradient descent and learning rates, "
    "which goes on well past the sixteen tokens the encoder keeps of any text.",
    "Ünïcode: 12345!?",
    "",
]
batch = fast(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
json.dump({"max_tokens": 16, "texts": texts,
           "token_ids": [ids[:int(m.sum())] for ids, m in
                         zip(batch["input_ids"].tolist(), batch["attention_mask"])],
           "embeddings": pooled.tolist(),
           "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}},
          open(os.path.join(root, "tiny-bert-expected.json"), "w"), indent=1)
print("wrote", out, file=sys.stderr)
