"""One value of Stash's config.yml, read without a YAML parser: Stash's own Python (the
plugin's) may have none. Standard library only."""

from __future__ import annotations

import json
import re
from typing import Optional


def config_line_value(text: str, key: str) -> Optional[str]:
    """The value of one top-level `key: value` line of config.yml, read without a YAML
    parser (Stash's Python may have none). Stash writes config.yml with Go's yaml: one
    top-level key per line at column 0, a path as a plain, 'single' or "double" quoted
    scalar. Anything else (block, flow, anchor, alias, tag) gives None. A misread can
    only pin a certificate the server does not present, which refuses the connection;
    it never makes another server trusted."""
    for line in text.splitlines():
        match = re.match(rf"{re.escape(key)}[ \t]*:(?:[ \t]+(.*))?$", line)
        if not match:
            continue
        value = (match.group(1) or "").strip()
        if value.startswith("'"):
            quoted = re.match(r"'((?:[^']|'')*)'\s*(#.*)?$", value)
            return quoted.group(1).replace("''", "'") if quoted else None
        if value.startswith('"'):
            quoted = re.match(r'("(?:[^"\\]|\\.)*")\s*(#.*)?$', value)
            try:
                return json.loads(quoted.group(1)) if quoted else None
            except ValueError:  # a YAML escape JSON lacks
                return None
        if not value or value[0] in "|>&*!{[%@`#":
            return None
        return re.split(r"\s+#", value, maxsplit=1)[0]
    return None
