"""The export formats, by their ``--format`` name, with their file suffix. :func:`sweep.export.render` writes
each; the CLI derives its choices and default file names from here without importing pandas."""

FORMATS = {
    "md": "md",  # for a reader: numbers to 4 significant digits, a dash where a trial has no value
    "latex": "tex",
    "html": "html",
    "csv": "csv",  # for scripts: numbers at full precision, missing values empty
    "json": "json",  # for scripts: a list of one object per trial, missing values null
}
