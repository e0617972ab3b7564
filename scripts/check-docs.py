#!/usr/bin/env python3
"""Check the links of README.md and docs/**/*.md (run by scripts/test.sh).

For every Markdown file it checks:
- each relative link `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` and
  reference definition `[name]: path`: the path exists in the repository (file or
  directory, never outside it), and an anchor names a heading of the target
  Markdown file, slugged as GitHub does (or an explicit `id`/`name` attribute);
- each path named in backticks that looks like a repository file: no spaces or
  wildcards, a `/` in it, and a first component that is a top-level directory of
  the repository (`charts/wsgate/values.yaml`, `bench/run.sh`, `src/proxy/`).
  A trailing `:LINE` or `:LINE-LINE` is ignored. Paths git ignores (build output
  such as `fuzz/artifacts/frames/`) may be absent.

External links (`http:`, `https:`, `mailto:`) are not fetched. Fenced code blocks
are skipped. Prints `file:line: message` for each problem and exits 1 if any.
Python 3 standard library only.
"""

import os
import re
import subprocess
import sys
import unicodedata

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ID = re.compile(r"""<[a-zA-Z][^>]*\s(?:id|name)=["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINE_SUFFIX = re.compile(r":\d+(?:-\d+)?$")


def top_level_dirs():
    return {
        name
        for name in os.listdir(ROOT)
        if not name.startswith(".") and os.path.isdir(os.path.join(ROOT, name))
    } | {"docs"}


def markdown_files():
    files = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    for dirpath, dirnames, filenames in os.walk(docs):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".md"):
                files.append(os.path.join(dirpath, name))
    return [f for f in files if os.path.isfile(f)]


def lines_outside_fences(text):
    """(line number, line) for every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield number, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and line.strip() == m.group(1):
            fence = None


def slug(heading):
    """GitHub's anchor for a heading's text (as github-slugger makes it)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("*", "")  # emphasis markers
    text = text.strip().lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_" or ch == " " or cat[0] in "LNM":
            out.append("-" if ch == " " else ch)
    return "".join(out)


_anchor_cache = {}


def anchors(path):
    if path not in _anchor_cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        found, seen = set(), {}
        for _, line in lines_outside_fences(text):
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            found.update(HTML_ID.findall(line))
        _anchor_cache[path] = found
    return _anchor_cache[path]


def git_ignores(rel):
    try:
        r = subprocess.run(
            ["git", "-C", ROOT, "check-ignore", "-q", "--", rel],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return False
    return r.returncode == 0


def inside_root(path):
    real = os.path.realpath(path)
    return real == ROOT or real.startswith(ROOT + os.sep)


def check_link(md, target, problems, where):
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if not target or SCHEME.match(target) or target.startswith("//"):
        return
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    if path_part:
        if path_part.startswith("/"):
            dest = os.path.join(ROOT, path_part.lstrip("/"))
        else:
            dest = os.path.normpath(os.path.join(os.path.dirname(md), path_part))
        if not inside_root(dest):
            problems.append(f"{where}: link leaves the repository: {target}")
            return
        if not os.path.exists(dest):
            problems.append(f"{where}: broken link: {target}")
            return
    else:
        dest = md
    if anchor:
        if os.path.isdir(dest):
            readme = os.path.join(dest, "README.md")
            if not os.path.isfile(readme):
                problems.append(f"{where}: anchor on a directory without README.md: {target}")
                return
            dest = readme
        if not dest.endswith(".md"):
            return  # line anchors into source files (#L10) are GitHub's own
        if anchor not in anchors(dest):
            problems.append(f"{where}: no heading for anchor #{anchor} in "
                            f"{os.path.relpath(dest, ROOT)}: {target}")


def check_code_path(span, tops, problems, where):
    s = span.strip()
    if not s or any(c.isspace() for c in s) or "/" not in s:
        return
    if any(c in s for c in "*?<>{}$|,;=()[]\"'") or "..." in s or "…" in s:
        return
    s = LINE_SUFFIX.sub("", s)
    first = s.split("/", 1)[0]
    if first not in tops:
        return
    if os.path.exists(os.path.join(ROOT, s)):
        return
    if git_ignores(s.rstrip("/") + ("/" if s.endswith("/") else "")):
        return
    problems.append(f"{where}: names `{span}`, which is not in the repository")


def check_file(md, tops, problems):
    with open(md, encoding="utf-8") as f:
        text = f.read()
    rel = os.path.relpath(md, ROOT)
    for number, line in lines_outside_fences(text):
        where = f"{rel}:{number}"
        for m in INLINE_CODE.finditer(line):
            check_code_path(m.group(2), tops, problems, where)
        bare = INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), line)
        # Links keep their text (which may be code): find them on the line with
        # code spans blanked only outside the link's own brackets.
        for m in LINK.finditer(line):
            start = m.start()
            if bare[start] == "x":  # the link itself sits inside a code span
                continue
            check_link(md, m.group(1), problems, where)
        m = REF_DEF.match(bare)
        if m:
            target = REF_DEF.match(line).group(1)
            check_link(md, target, problems, where)


def main():
    tops = top_level_dirs()
    problems = []
    files = markdown_files()
    for md in files:
        check_file(md, tops, problems)
    for p in problems:
        print(p)
    if problems:
        print(f"check-docs: {len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"check-docs: {len(files)} file(s), links and paths ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
