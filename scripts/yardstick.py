#!/usr/bin/env python3
"""A typical Kaggle notebook pipeline, as ../shared/README.md describes the yardstick, scored
on the folds of an `ensemble cv` run so that both hold out the same rows.

pandas; scikit-learn's TfidfVectorizer of word 1-2-grams (1,000 columns) entered as A - B;
about 65 hand-made length and markdown features; LightGBM multiclass, learning rate 0.05,
31 leaves, early stopping after 50 rounds. Notebooks stop on the held-out fold itself
(`--early-stopping-on held-out`, which flatters the OOF score); `inner-fold` stops on the
next fold, as `ensemble cv` does by default.

Usage: scripts/yardstick.py TRAIN.csv[.gz] FOLDS.csv OUT [--early-stopping-on inner-fold]
Needs: pandas, scikit-learn, lightgbm (pip install pandas scikit-learn lightgbm).
Prints each fold's log loss and the OOF log loss, and writes OUT/metrics.json and
OUT/folds.csv in the shape `ensemble compare` reads, so that
`ensemble compare OUT runs/mine` pairs the two fold by fold.
"""
import argparse
import json
import os
import re
import shutil
import time

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import log_loss


def join_turns(field):
    try:
        turns = json.loads(field)
    except (TypeError, ValueError):
        return str(field)
    return "\n\n".join(t for t in turns if isinstance(t, str))


def text_features(text):
    words = text.split()
    lines = text.split("\n")
    return {
        "chars": len(text),
        "words": len(words),
        "lines": len(lines),
        "paragraphs": text.count("\n\n") + 1,
        "headers": sum(l.lstrip().startswith("#") for l in lines),
        "bullets": sum(l.lstrip().startswith(("- ", "* ")) for l in lines),
        "numbered": sum(bool(re.match(r"\s*\d+[.)] ", l)) for l in lines),
        "code_blocks": text.count("```") // 2,
        "bold": text.count("**") // 2,
        "links": text.count("http"),
        "sentences": len(re.findall(r"[.!?]+(\s|$)", text)),
        "questions": text.count("?"),
        "exclamations": text.count("!"),
        "unique_words": len(set(w.lower() for w in words)),
        "ttr": len(set(w.lower() for w in words)) / max(len(words), 1),
        "mean_word_len": sum(len(w) for w in words) / max(len(words), 1),
        "uppercase_ratio": sum(c.isupper() for c in text) / max(len(text), 1),
        "digits": sum(c.isdigit() for c in text),
        "punctuation": sum(c in ".,;:!?" for c in text),
    }


def features(df):
    rows = []
    for p, a, b in zip(df.prompt, df.response_a, df.response_b):
        fa, fb = text_features(a), text_features(b)
        row = {f"a_{k}": v for k, v in fa.items()}
        row.update({f"b_{k}": v for k, v in fb.items()})
        row.update({f"diff_{k}": fa[k] - fb[k] for k in fa})
        row.update({"p_chars": len(p), "p_words": len(p.split()), "p_lines": p.count("\n") + 1})
        row["ratio_chars"] = (fa["chars"] + 1) / (fb["chars"] + 1)
        row["ratio_words"] = (fa["words"] + 1) / (fb["words"] + 1)
        rows.append(row)
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train")
    parser.add_argument("folds")
    parser.add_argument("out")
    parser.add_argument("--early-stopping-on", choices=["held-out", "inner-fold"], default="held-out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    started = time.time()
    df = pd.read_csv(args.train)
    for column in ["prompt", "response_a", "response_b"]:
        df[column] = df[column].map(join_turns)
    labels = np.argmax(df[["winner_model_a", "winner_model_b", "winner_tie"]].values, axis=1)
    folds = pd.read_csv(args.folds).set_index("id").loc[df.id, "fold"].values
    dense = features(df)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), max_features=1000, sublinear_tf=True)
    tfidf.fit(pd.concat([df.response_a, df.response_b]))
    diff = tfidf.transform(df.response_a) - tfidf.transform(df.response_b)
    X = sp.hstack([sp.csr_matrix(dense.values.astype(np.float64)), diff]).tocsr()
    feature_seconds = time.time() - started

    params = {
        "objective": "multiclass",
        "num_class": 3,
        "metric": "multi_logloss",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "num_threads": args.threads,
        "verbose": -1,
        "seed": 42,
    }
    n_folds = folds.max() + 1
    oof = np.zeros((len(df), 3))
    fold_losses = []
    fold_rows = []
    for fold in range(n_folds):
        stopping = fold if args.early_stopping_on == "held-out" else (fold + 1) % n_folds
        train_rows = np.where((folds != fold) & (folds != stopping))[0]
        stop_rows = np.where(folds == stopping)[0]
        held_out = np.where(folds == fold)[0]
        model = lgb.train(
            params,
            lgb.Dataset(X[train_rows], labels[train_rows]),
            num_boost_round=5000,
            valid_sets=[lgb.Dataset(X[stop_rows], labels[stop_rows])],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        oof[held_out] = model.predict(X[held_out], num_iteration=model.best_iteration)
        fold_losses.append(log_loss(labels[held_out], oof[held_out], labels=[0, 1, 2]))
        fold_rows.append((len(train_rows), len(held_out)))
        print(f"fold {fold}: log loss {fold_losses[-1]:.4f} after {model.best_iteration} rounds", flush=True)
    result = {
        "oof_log_loss": log_loss(labels, oof, labels=[0, 1, 2]),
        "fold_log_losses": fold_losses,
        "early_stopping_on": args.early_stopping_on,
        "feature_seconds": feature_seconds,
        "seconds": time.time() - started,
    }
    print(json.dumps(result))
    os.makedirs(args.out, exist_ok=True)
    shutil.copy(args.folds, os.path.join(args.out, "folds.csv"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(
            {
                "oof_log_loss": result["oof_log_loss"],
                "folds": [
                    {"fold": k, "log_loss": loss, "train_rows": rows[0], "held_out_rows": rows[1]}
                    for k, (loss, rows) in enumerate(zip(fold_losses, fold_rows))
                ],
                "config": {"lgbm": {"seeds": 1}},
                "yardstick": result,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
