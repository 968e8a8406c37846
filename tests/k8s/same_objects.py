#!/usr/bin/env python3
"""Compares two multi-document YAML files object by object (kind, namespace, name), ignoring document
order and formatting: `helm template`'s output against deploy/kloak.yaml, which scripts/chart/render
writes. Prints every difference; exits 1 when there is one.

usage: same_objects.py A.yaml B.yaml
"""
import sys

import yaml


def objects(path):
    found = {}
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                meta = doc.get("metadata", {})
                found[(doc.get("kind"), meta.get("namespace", ""), meta.get("name"))] = doc
    return found


def differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'second' if key not in a else 'first'}"
            else:
                yield from differences(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]")
    elif a != b:
        yield f"{where}: {a!r} != {b!r}"


def main():
    first, second = objects(sys.argv[1]), objects(sys.argv[2])
    problems = [f"{key}: only in {sys.argv[1] if key in first else sys.argv[2]}"
                for key in sorted(set(first) ^ set(second), key=str)]
    for key in sorted(set(first) & set(second), key=str):
        problems += [f"{key[0]}/{key[2]}{d}" for d in differences(first[key], second[key])]
    print("\n".join(problems) or f"{len(first)} objects, the same")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
