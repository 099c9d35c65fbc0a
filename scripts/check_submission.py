#!/usr/bin/env python3
"""Checks a submission against its test file: the header, every test id exactly once (and no
other), three finite probabilities in [0, 1] per row summing to 1 within 1e-4.

    python3 scripts/check_submission.py test.csv submission.csv

Exits 1 with the first problem named (file, line, id); prints a one-line summary otherwise.
"""
import csv
import math
import sys

csv.field_size_limit(sys.maxsize)


def main(test_path, submission_path):
    with open(test_path, newline="", encoding="utf-8") as f:
        test_ids = [row["id"] for row in csv.DictReader(f)]
    header = ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    seen = {}
    with open(submission_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if next(reader, None) != header:
            return f"{submission_path}: the header is not {','.join(header)}"
        for line, row in enumerate(reader, start=2):
            where = f"{submission_path}, line {line}"
            if len(row) != 4:
                return f"{where}: {len(row)} fields, expected 4"
            if row[0] in seen:
                return f"{where}: id {row[0]} again (first on line {seen[row[0]]})"
            seen[row[0]] = line
            try:
                p = [float(v) for v in row[1:]]
            except ValueError:
                return f"{where}: id {row[0]}: not numbers: {row[1:]}"
            if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in p):
                return f"{where}: id {row[0]}: probabilities outside [0, 1]: {p}"
            if abs(sum(p) - 1.0) > 1e-4:
                return f"{where}: id {row[0]}: probabilities sum to {sum(p)}"
    missing = [i for i in test_ids if i not in seen]
    extra = [i for i in seen if i not in set(test_ids)]
    if missing or extra:
        return (f"{submission_path}: {len(missing)} test ids missing (first: {missing[:3]}), "
                f"{len(extra)} ids not in {test_path} (first: {extra[:3]})")
    print(f"{submission_path}: {len(test_ids)} test ids, each once; rows sum to 1")
    return None


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    problem = main(sys.argv[1], sys.argv[2])
    if problem:
        sys.exit(f"check_submission: {problem}")
