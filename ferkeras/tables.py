"""Tables of text, formatted one way everywhere: aligned columns for a terminal (`text_table`) and
Markdown for docs and benchmark reports (`markdown_table`). The standard library only."""


def text_table(rows, align=None, min_widths=None, gap="  "):
    """Rows of cells as lines of aligned columns, the first row usually the header.

    Each column is as wide as its widest cell, or `min_widths[i]` when wider; `align` has one letter
    per column, "l" (left, the default) or "r" (right: numbers). Trailing spaces are cut.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    if not rows:
        return ""
    count = max(len(row) for row in rows)
    align = align or "l" * count
    min_widths = min_widths or [0] * count
    widths = [max([min_widths[i]] + [len(row[i]) for row in rows if i < len(row)]) for i in range(count)]
    return "\n".join(gap.join(cell.rjust(width) if side == "r" else cell.ljust(width)
                              for cell, width, side in zip(row, widths, align)).rstrip()
                     for row in rows)


def markdown_table(header, rows):
    """A Markdown table: `header` the column names, `rows` lists of cells (a '|' in a cell is the
    caller's to escape)."""
    lines = ["| " + " | ".join(str(name) for name in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
