"""The Ray run's CPU stages: a document becomes rows of pages still to do, a row a rendered page.

:func:`expand_document` counts a document's pages and leaves out those whose shards are
already finished (a resumed run); :func:`render_page` renders one page into raw RGB bytes, or
finishes it from its PDF text layer (``--ocr auto|never``) and stores its shard, so that it
never takes a place in an engine batch. Neither raises: a document or page that fails becomes
an error row for the OCR stage to record (Ray's ``max_errored_blocks`` would drop whole blocks).
"""

from __future__ import annotations

import json
from typing import Any

from . import inputs
from .cluster_shards import Job, input_doc, load_shards, store_shard
from .figures import crop_figures
from .inputs import InputError
from .routing import TextLayerPage, route


def expand_document(row: dict[str, Any], job: dict[str, Any]) -> list[dict[str, Any]]:
    """A document -> one row per page still to do (or one error row)."""
    opts = Job(**job).convert_options()
    base = {k: row[k] for k in ("order", "path", "display", "rel", "kind", "fp")}
    err = {"index": -1, "wanted": "[]", "image": b"", "size": "", "dpi": "null", "notes": "[]"}
    try:
        count = inputs.count_pages(input_doc(row))
    except InputError as e:
        return [base | err | {"error": str(e)}]
    except OSError as e:
        return [base | err | {"error": f"cannot read ({e.strerror or e})"}]
    wanted = inputs.select_pages(inputs.parse_page_ranges(opts.pages), count)
    if not wanted:
        return [base | err | {"error": f"--pages {opts.pages} selects none of its {count} pages"}]
    assert opts.output is not None
    done = load_shards(opts.output, row["rel"], json.loads(row["fp"]))
    todo = [i for i in wanted if i not in done or done[i].status == "error"]
    # Every page already finished (a run killed before the outputs were written): one row
    # with index -1 and no error asks the OCR stage to finish the document.
    rows = [base | err | {"index": i, "error": ""} for i in todo] or [base | err | {"error": ""}]
    for r in rows:
        r["wanted"] = json.dumps(wanted)
    return rows


_RENDERER: inputs.PageRenderer | None = None


def render_page(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Render one page into raw RGB bytes (a render failure becomes the row's error).

    A page read from its text layer (``--ocr auto|never``) is stored here, and its row only
    asks the OCR stage to finish the document: it never takes a place in an engine batch.
    """
    global _RENDERER
    if row["index"] < 0 or row["error"]:
        return row
    if _RENDERER is None:
        _RENDERER = inputs.PageRenderer()
    opts = job["opts"]
    try:
        page = route(_RENDERER, input_doc(row), row["index"], opts["dpi"], opts.get("ocr", "auto"))
        if isinstance(page, TextLayerPage):
            if page.image is not None:
                crop_figures(page.result, page.image, opts["output"], row["rel"])
            store_shard(opts["output"], row, page.result)
            return row | {"index": -1}
        image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
    except Exception as e:  # one page must never fail the task (and its block)
        return row | {"error": f"cannot render ({e})"}
    return row | {
        "notes": json.dumps(page.notes),
        "image": image.tobytes(),
        "size": f"{image.width}x{image.height}",
        "dpi": json.dumps(page.dpi),  # JSON keeps int vs float vs None exactly as rendered
    }
