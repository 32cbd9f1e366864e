"""The static files storage: whitenoise's compressed, hashed storage, for ES modules too."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # The chat page is ES modules importing each other: rewrite `import … from
    # "./x.js"` and `import("./y.mjs")` to the hashed names, or a browser
    # would mix hashed and unhashed copies of one module.
    support_js_module_import_aggregation = True
