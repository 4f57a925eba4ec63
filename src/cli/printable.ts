// Making what the CLI prints for people safe for a terminal.

/**
 * Text from the service or the command line, made safe to print on a
 * terminal: control characters (C0, DEL, C1: escape sequences that recolour,
 * move the cursor, retitle the window or fake a line of output), line and
 * paragraph separators and bidirectional overrides (which reorder what is
 * shown) become visible escapes such as \x1b and \u202e. Every value in
 * human-readable output goes through it; --json output is JSON-escaped anyway.
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

// C0 controls, DEL, C1 controls, U+2028/2029, the bidi embeddings/overrides/isolates and marks, BOM.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;
