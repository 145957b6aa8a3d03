#!/usr/bin/env python3
"""Writes the hostile corpus next to this file: the inputs a security probe
used against Weir, each small, each once able to crash or freeze a server.
`tests/tests/sql.rs` and `tests/tests/intake.rs` run every one.

Run it again after changing it; the files it writes are kept in the
repository so the tests need no Python."""

import pathlib
import zipfile

HERE = pathlib.Path(__file__).resolve().parent

CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>
<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>
</Types>"""
RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>
</Relationships>"""
WORKBOOK = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">
<sheets><sheet name="data" sheetId="1" r:id="rId1"/></sheets>
</workbook>"""
WORKBOOK_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>
<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>
</Relationships>"""


def sheet(cells):
    rows = {}
    for ref, xml in cells:
        row = "".join(c for c in ref if c.isdigit())
        rows.setdefault(int(row), []).append(f'<c r="{ref}"{xml}</c>')
    body = "".join(f'<row r="{r}">{"".join(cs)}</row>' for r, cs in sorted(rows.items()))
    last = cells[-1][0]
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f'<dimension ref="A1:{last}"/><sheetData>{body}</sheetData></worksheet>'
    )


def workbook(path, sheet_xml, shared):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", CONTENT_TYPES)
        z.writestr("_rels/.rels", RELS)
        z.writestr("xl/workbook.xml", WORKBOOK)
        z.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        z.writestr("xl/worksheets/sheet1.xml", sheet_xml)
        z.writestr("xl/sharedStrings.xml", shared)


def shared_strings(*strings):
    items = "".join(f"<si><t>{s}</t></si>" for s in strings)
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="{len(strings)}" '
        f'uniqueCount="{len(strings)}">{items}</sst>'
    )


# Cells at A1 and XFD1048576: a reader that lays out the rectangle between
# them allocates 17 billion cells.
workbook(
    HERE / "dense.xlsx",
    sheet([("A1", ' t="s"><v>0</v>'), ("XFD1048576", "><v>1</v>")]),
    shared_strings("header"),
)

# One shared string of 200 MB that deflates to a few hundred KB.
workbook(
    HERE / "huge-string.xlsx",
    sheet([("A1", ' t="s"><v>0</v>'), ("A2", ' t="s"><v>1</v>')]),
    shared_strings("header", "x" * 200_000_000),
)

terms = lambda n, term, op: op.join([term] * n)
(HERE / "deep-plus.sql").write_text(f"CREATE VIEW output.o AS SELECT {terms(2000, '1', '+')} AS s\n")
(HERE / "or-chain.sql").write_text(
    f"CREATE VIEW output.o AS SELECT * FROM input.data WHERE {terms(2000, 'x = 1', ' OR ')}\n"
)
(HERE / "union-chain.sql").write_text(
    "CREATE VIEW output.o AS " + terms(2000, "SELECT 1 AS x", " UNION ALL ") + "\n"
)

# 5,000 empty entries: an archive whose entries cost more to walk and
# unpack than its bytes suggest (a million fit in 100 MB).
with zipfile.ZipFile(HERE / "many-entries.zip", "w", zipfile.ZIP_STORED) as z:
    for i in range(5_000):
        z.writestr(f"p{i}.csv", "")
