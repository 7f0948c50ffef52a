#!/usr/bin/env python3
"""Collect the findings of scripts/analyze.sh and drop the suppressed ones.

Usage: analyze.py SUPP CPPCHECK_XML SCAN_BUILD_DIR SOURCE...

Three sources of findings, each keyed as tool:check:file:function[:name]
(the function, not the line, so that a suppression survives edits):
  cppcheck   its XML report (--xml --xml-version=2)
  clang      the plist reports of scan-build (the clang static analyzer)
  lint       this project's rules for the defects of issue 9, items 15-16,
             which no analyser finds (lengths come from other functions):
             buffer  a fixed-size array local to a function
             count   a size counted by hand: an integer literal of 16 or
                     more in an allocation size or added to a length
SUPP lists suppressions, one a line, fnmatch patterns, each with a reason
after '#'.  Prints every finding, marked "suppressed" or not, and exits 1
when one is not suppressed; a suppression that matches nothing is
reported as stale (remove it) without failing.
"""
import fnmatch
import glob
import os
import plistlib
import re
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNC_RE = re.compile(r"^(?:static\s+)?(?:[a-zA-Z_][\w ]*\*?\s*)?"
                     r"\**(ngx_\w+)\(")


def rel(path):
    """Relative to the top: cppcheck and scan-build run in build/nginx."""
    if not os.path.isabs(path):
        path = os.path.join(ROOT, "build", "nginx", path)
    return os.path.relpath(os.path.normpath(path), ROOT)


_funcs = {}


def function_at(path, line):
    """nginx style: a function's name starts a line ("name(" at column
    0), its body ends with "}" at column 0."""
    if path not in _funcs:
        try:
            lines = open(os.path.join(ROOT, path), errors="replace") \
                .read().splitlines()
        except OSError:
            lines = []
        spans, name = [], None
        for i, l in enumerate(lines, 1):
            m = FUNC_RE.match(l)
            if m and not l.rstrip().endswith(";"):
                name, start = m.group(1), i
            elif l.startswith("}") and name:
                spans.append((start, i, name))
                name = None
        _funcs[path] = spans
    for start, end, name in _funcs[path]:
        if start <= line <= end:
            return name
    return "-"


def cppcheck_findings(xml_path):
    out = []
    for err in ET.parse(xml_path).getroot().iter("error"):
        loc = err.find("location")
        if loc is None:
            if err.get("severity") == "information":
                continue
            out.append(("cppcheck", err.get("id"), "-", "-", 0,
                        err.get("msg")))
            continue
        path = rel(loc.get("file"))
        line = int(loc.get("line"))
        out.append(("cppcheck", err.get("id"), path,
                    function_at(path, line), line, err.get("msg")))
    return out


def clang_findings(scan_dir):
    out = []
    for f in sorted(glob.glob(os.path.join(scan_dir, "**", "*.plist"),
                              recursive=True)):
        with open(f, "rb") as fh:
            d = plistlib.load(fh)
        for diag in d.get("diagnostics", []):
            loc = diag["location"]
            path = rel(d["files"][loc["file"]])
            out.append(("clang", diag.get("check_name", "?"), path,
                        diag.get("issue_context") or
                        function_at(path, loc["line"]),
                        loc["line"], diag.get("description")))
    return out


DECL_RE = re.compile(r"^\s+(?:static\s+)?(?:u_char|char|XML_Char)\s+[^=(]*\[")
ARRAY_RE = re.compile(r"\b(\w+)\[([^\]]+)\]")
COUNT_RES = [
    re.compile(r"\b(?:ngx_pnalloc|ngx_palloc|ngx_pcalloc|ngx_alloc|ngx_calloc"
               r"|ngx_xmpp_cm_\w*alloc)\([^;]*?\b(\d{2,})\b"),
    re.compile(r"\b(?:len|size|n)\s*\+?=\s*(?:[^;]*[+*]\s*)?(\d{2,})\b"),
]


def lint_findings(sources):
    out = []
    for src in sources:
        path = rel(os.path.abspath(src))
        text = open(src, errors="replace").read().splitlines()
        for i, l in enumerate(text, 1):
            if l.lstrip().startswith(("*", "/*")):
                continue
            fn = function_at(path, i) if DECL_RE.match(l) else "-"
            for m in ARRAY_RE.finditer(l) if fn != "-" else []:
                out.append(("lint", "buffer", path,
                            "%s:%s" % (fn, m.group(1)), i,
                            "fixed-size buffer %s[%s]: count the length "
                            "and allocate, or list it with the bound that "
                            "makes it safe" % (m.group(1), m.group(2))))
            for rx in COUNT_RES:
                m = rx.search(l)
                if m and int(m.group(1)) >= 16:
                    out.append(("lint", "count", path, function_at(path, i),
                                i, "size counted by hand (%s): count it "
                                "from sizeof() and the parts' lengths"
                                % m.group(1)))
                    break
    return out


def load_supp(path):
    supp = []
    for n, l in enumerate(open(path), 1):
        pat = l.split("#", 1)[0].strip()
        if not pat:
            continue
        if "#" not in l:
            sys.exit("%s:%d: a suppression needs a reason after '#'"
                     % (path, n))
        supp.append([pat, 0, n])
    return supp


def main():
    supp_path, cpp_xml, scan_dir = sys.argv[1:4]
    supp = load_supp(supp_path)
    findings = (cppcheck_findings(cpp_xml) + clang_findings(scan_dir)
                + lint_findings(sys.argv[4:]))
    bad = stale = 0
    for tool, check, path, fn, line, msg in findings:
        key = "%s:%s:%s:%s" % (tool, check, path, fn)
        hit = next((s for s in supp if fnmatch.fnmatchcase(key, s[0])), None)
        if hit:
            hit[1] += 1
            state = "suppressed"
        else:
            bad += 1
            state = "FINDING"
        print("%-10s %s:%d: %s [%s:%s] (%s)" % (state, path, line, msg,
                                                tool, check, key))
    for pat, used, n in supp:
        if not used:
            stale += 1
            print("STALE      %s:%d: suppression %s matches nothing"
                  % (os.path.relpath(supp_path, ROOT), n, pat))
    print("analyze: %d findings, %d suppressed, %d not; %d stale "
          "suppressions" % (len(findings), len(findings) - bad, bad, stale))
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
