#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a circle.

Usage: scripts/module-cycles.py DIR...  (e.g. operator/src, or worker/src/pipeline)
DIR is a crate's src (its top-level modules) or a module's directory (its submodules). An edge
a -> b is any `crate::b` path in a's files (`a.rs` or `a/`); for a module's directory, any
`crate::<module>::b`, or `super::b` in a file directly inside it. Test code is left out
(`tests/`, `tests.rs`, `*_tests.rs`, `fixtures.rs`, everything after `#[cfg(test)]`). Text,
not the compiler: a path inside a string counts too, which errs on the side of reporting.
"""
import os
import re
import sys


def is_test_file(name):
    """A file of test code only, included with `#[cfg(test)] mod tests;`."""
    return name == "tests.rs" or name.endswith("_tests.rs")


def module_path(src):
    """`crate::`'s path to the module whose directory is `src`: "" for a crate's src."""
    parts = []
    d = os.path.normpath(src)
    while not any(os.path.exists(os.path.join(d, root)) for root in ("lib.rs", "main.rs")):
        parent = os.path.dirname(d)
        if parent == d:
            return ""
        parts.insert(0, os.path.basename(d))
        d = parent
    return "".join(p + "::" for p in parts)


def module_files(src):
    """Top-level module name -> its source files."""
    mods = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name in ("lib", "main", "mod", "tests", "fixtures", "bin") or name.endswith("_tests"):
            continue
        if os.path.isdir(path):
            files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                     if f.endswith(".rs") and not is_test_file(f)
                     and "tests" not in r.split(os.sep)]
        elif entry.endswith(".rs"):
            files = [path]
        else:
            continue
        mods.setdefault(name, []).extend(files)
    return mods


def edges(src, mods, prefix=""):
    """`prefix`: the path of the module whose submodules `mods` are ("" for a crate's src)."""
    out = {m: set() for m in mods}
    crate = r"\bcrate::" + re.escape(prefix)
    for m, files in mods.items():
        for f in files:
            text = open(f, encoding="utf-8").read().split("#[cfg(test)]")[0]
            text = re.sub(r"//[^\n]*", "", text)
            # In a module's directory, `super::` of a file directly inside it is that module.
            roots = [crate]
            if prefix and f == os.path.join(src, m + ".rs"):
                roots.append(r"\bsuper::")
            for root in roots:
                for b in re.findall(root + r"([a-z_][a-z0-9_]*)", text):
                    if b in mods and b != m:
                        out[m].add(b)
                for group in re.findall(root + r"\{([^}]*)\}", text):
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
        found = cycles(edges(src, module_files(src), module_path(src)))
        for comp in found:
            print(f"{src}: modules import each other in a circle: {' <-> '.join(comp)}")
        if not found:
            print(f"{src}: no import circle between its modules")
        bad = bad or bool(found)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
