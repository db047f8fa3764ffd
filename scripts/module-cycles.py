#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a circle.

Usage: scripts/module-cycles.py CRATE_SRC...  (e.g. operator/src)
An edge a -> b is any `crate::b` path in a's files (`a.rs` or `a/`), test code left out
(`tests/`, `fixtures.rs`, everything after `#[cfg(test)]`). Text, not the compiler: a path
inside a string counts too, which errs on the side of reporting.
"""
import os
import re
import sys


def module_files(src):
    """Top-level module name -> its source files."""
    mods = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name in ("lib", "main", "tests", "fixtures", "bin"):
            continue
        if os.path.isdir(path):
            files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                     if f.endswith(".rs") and "tests" not in r.split(os.sep)]
        elif entry.endswith(".rs"):
            files = [path]
        else:
            continue
        mods.setdefault(name, []).extend(files)
    return mods


def edges(mods):
    out = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = open(f, encoding="utf-8").read().split("#[cfg(test)]")[0]
            text = re.sub(r"//[^\n]*", "", text)
            for b in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text):
                if b in mods and b != m:
                    out[m].add(b)
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                for b in re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group):
                    if b in mods and b != m:
                        out[m].add(b)
    return out


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    bad = False
    for src in sys.argv[1:]:
        for comp in cycles(edges(module_files(src))):
            bad = True
            print(f"{src}: modules import each other in a circle: {' <-> '.join(comp)}")
        if not bad:
            print(f"{src}: no import circle between its modules")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
