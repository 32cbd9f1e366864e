"""Refresh the vendored front-end libraries from npm (`make vendor`).

Each package is fetched with `npm pack NAME@VERSION` (the registry's own
tarball, checked against its integrity hash by npm), and only the built files
the page or the tests load are copied out. static/vendor/manifest.json then
records, for every copied file, the package, version, licence and sha256, and
static/vendor/README.md says the same for people. Nothing is built: users and
`make run` need no Node.js; only this target does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATIC_VENDOR = REPO / "static" / "vendor"
TEST_VENDOR = REPO / "tests" / "vendor"

# (package, version, {file in the package: where it goes}, what it is for)
# Minified builds where there are any: DOMPurify and KaTeX as UMD files, which
# markdown.js imports for their side effect (they set globalThis.DOMPurify /
# globalThis.katex), since their ES module builds are not minified.
PACKAGES = [
    (
        "markdown-it",
        "15.0.3",
        {"dist/browser/markdown-it.esm.min.mjs": STATIC_VENDOR / "markdown-it" / "markdown-it.min.mjs"},
        "page: Markdown to HTML (raw HTML off)",
    ),
    (
        "dompurify",
        "3.5.0",
        {
            "dist/purify.min.js": STATIC_VENDOR / "dompurify" / "purify.min.js",
            # Named by the file's sourceMappingURL: collectstatic wants it there.
            "dist/purify.min.js.map": STATIC_VENDOR / "dompurify" / "purify.min.js.map",
        },
        "page: sanitises the renderer's HTML",
    ),
    (
        "@highlightjs/cdn-assets",
        "11.12.0",
        {"es/highlight.min.js": STATIC_VENDOR / "highlight.js" / "highlight.min.mjs"},
        "page: code highlighting (loaded when a reply has code)",
    ),
    (
        "katex",
        "0.19.1",
        {
            "dist/katex.min.js": STATIC_VENDOR / "katex" / "katex.min.js",
            "dist/katex.min.css": STATIC_VENDOR / "katex" / "katex.min.css",
            "dist/fonts/": STATIC_VENDOR / "katex" / "fonts",
        },
        "page: math (loaded only when a reply has math)",
    ),
    ("axe-core", "4.14.1", {"axe.min.js": TEST_VENDOR / "axe-core" / "axe.min.js"}, "tests: accessibility audit"),
    (
        "commonmark-spec",
        "0.31.2",
        {"spec.txt": TEST_VENDOR / "commonmark-spec" / "spec.txt"},
        "tests: the CommonMark spec examples (spec.json is made from spec.txt by the package's index.js)",
    ),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def npm_pack(spec: str, into: Path) -> tuple[Path, dict]:
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)[0]
    return into / info["filename"], info


def spec_json(package_dir: Path, target: Path) -> None:
    """The spec examples as JSON, from the package's own extractor."""
    script = "process.stdout.write(JSON.stringify(require(process.argv[1]).tests, null, 1))"
    out = subprocess.run(
        ["node", "-e", script, str(package_dir / "index.js")], check=True, capture_output=True, text=True
    ).stdout
    target.write_text(out + "\n")


def copy(source: Path, target: Path) -> list[Path]:
    if source.is_dir():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        return sorted(p for p in target.rglob("*") if p.is_file())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return [target]


def main() -> int:
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, files, purpose in PACKAGES:
            tarball, info = npm_pack(f"{name}@{version}", Path(tmp))
            unpacked = Path(tmp) / tarball.stem
            with tarfile.open(tarball) as tar:
                tar.extractall(unpacked, filter="data")
            package = unpacked / "package"
            licence = json.loads((package / "package.json").read_text()).get("license", "")
            copied = []
            for source, target in files.items():
                copied += copy(package / source, target)
            licence_file = next(iter(files.values()))
            licence_dir = licence_file if licence_file.is_dir() else licence_file.parent
            copied += copy(package / "LICENSE", licence_dir / "LICENSE")
            if name == "commonmark-spec":
                spec_json(package, TEST_VENDOR / "commonmark-spec" / "spec.json")
                copied.append(TEST_VENDOR / "commonmark-spec" / "spec.json")
            for path in copied:
                records.append(
                    {
                        "package": name,
                        "version": version,
                        "license": licence,
                        "integrity": info["integrity"],
                        "purpose": purpose,
                        "file": str(path.relative_to(REPO)),
                        "sha256": sha256(path),
                    }
                )
            print(f"vendor: {name}@{version} ({licence}): {len(copied)} files")
    (STATIC_VENDOR / "manifest.json").write_text(json.dumps(records, indent=1) + "\n")
    write_readme(records)
    return 0


def write_readme(records: list[dict]) -> None:
    lines = [
        "# Vendored front-end libraries",
        "",
        "Refreshed by `make vendor` (scripts/vendor.py: `npm pack NAME@VERSION`, then the built files",
        "are copied here, and test-only ones to tests/vendor/). Committed as built: the site needs no",
        "build step and no Node.js. Every file's sha256 is in manifest.json.",
        "",
        "| Package | Version | Licence | Used for | npm integrity |",
        "|---|---|---|---|---|",
    ]
    seen = set()
    for record in records:
        if record["package"] in seen:
            continue
        seen.add(record["package"])
        lines.append(
            f"| {record['package']} | {record['version']} | {record['license']} | {record['purpose']}"
            f" | `{record['integrity'][:24]}…` |"
        )
    lines += ["", "## Files", "", "| File | sha256 |", "|---|---|"]
    lines += [f"| {r['file']} | `{r['sha256']}` |" for r in records if "/fonts/" not in r["file"]]
    lines += ["", "The KaTeX fonts (static/vendor/katex/fonts/) are listed with their sha256 in manifest.json."]
    (STATIC_VENDOR / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
