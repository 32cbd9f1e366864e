"""The static files storage: whitenoise's compressed, hashed storage, for ES modules too."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # The chat page is ES modules importing each other: rewrite `import … from
    # "./x.js"` and `import("./y.mjs")` to the hashed names, or a browser
    # would mix hashed and unhashed copies of one module.
    support_js_module_import_aggregation = True
    # And `new URL("./z.css", import.meta.url)`: KaTeX's stylesheet, which markdown.js adds only when a
    # message has maths. Unhashed, it and the fonts it names were served with a short cache.
    patterns = (
        *CompressedManifestStaticFilesStorage.patterns,
        (
            "*.js",
            (
                (
                    r"""(?P<matched>new URL\(["'](?P<url>[./].*?)["'],\s*import\.meta\.url\))""",
                    """new URL("%(url)s", import.meta.url)""",
                ),
            ),
        ),
    )
