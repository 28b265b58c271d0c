//! Positions in source text: byte spans for miette, 1-based line and character column for people.
//!
//! Rhai and serde-saphyr both report columns in *characters*; miette labels need *byte* spans.
//! [`LineIndex`] converts between the two for one file.

use std::ops::Range;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end: end.max(start) }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(span: Span) -> miette::SourceSpan {
        miette::SourceSpan::new(span.start.into(), span.len())
    }
}

/// Line starts of one text, for offset ↔ (line, column) conversions.
#[derive(Debug, Clone)]
pub struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    /// Lines end at `\n`, `\r\n` and a lone `\r` (old Mac files; YAML and people count it as a
    /// line break, and so does miette when it draws the snippet).
    pub fn new(text: &str) -> LineIndex {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        for (index, byte) in bytes.iter().enumerate() {
            let breaks = match byte {
                b'\n' => true,
                b'\r' => bytes.get(index + 1) != Some(&b'\n'),
                _ => false,
            };
            if breaks {
                line_starts.push(index + 1);
            }
        }
        LineIndex { line_starts }
    }

    /// 1-based line and 1-based character column of a byte offset (clamped to the text).
    pub fn line_column(&self, text: &str, offset: usize) -> (u32, u32) {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let line = self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let line_start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = text.get(line_start..offset).map(|prefix| prefix.chars().count()).unwrap_or(0);
        (saturating_u32(line + 1), saturating_u32(column + 1))
    }

    /// 0-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1)
    }

    /// Byte offset where a 0-based line starts; `None` past the last line.
    pub fn line_start(&self, line: usize) -> Option<usize> {
        self.line_starts.get(line).copied()
    }

    /// Number of lines (at least 1).
    pub fn line_count(&self) -> usize {
        self.line_starts.len()
    }

    /// Byte offset of a 1-based line and 1-based character column, as Rhai reports positions.
    /// Out-of-range positions clamp to the end of the line or text.
    pub fn offset_of(&self, text: &str, line: usize, column: usize) -> usize {
        let Some(&line_start) = self.line_starts.get(line.saturating_sub(1)) else {
            return text.len();
        };
        // The next line's start less its break (`\n`, `\r` or `\r\n`).
        let line_end =
            self.line_starts
                .get(line)
                .map(|next| {
                    if text.as_bytes().get(next.saturating_sub(2)..*next) == Some(b"\r\n") {
                        next - 2
                    } else {
                        next - 1
                    }
                })
                .unwrap_or(text.len())
                .max(line_start);
        let line_text = text.get(line_start..line_end).unwrap_or_default();
        let byte_in_line =
            line_text.char_indices().nth(column.saturating_sub(1)).map(|(index, _)| index).unwrap_or(line_text.len());
        line_start + byte_in_line
    }
}

/// The text as miette should draw it: a lone `\r` becomes `\n` (same length, so every span
/// still points at the same bytes). miette counts a lone `\r` as a line break when it computes
/// line numbers but not when it splits the snippet into lines, which would draw a CR-only
/// file as one garbled line.
pub fn drawable(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let lone = |index: usize| bytes[index] == b'\r' && bytes.get(index + 1) != Some(&b'\n');
    if !(0..bytes.len()).any(lone) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() != Some(&'\n') {
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`drawable`] for shared text: the same `Arc` when nothing changes.
pub fn drawable_arc(text: &std::sync::Arc<str>) -> std::sync::Arc<str> {
    match drawable(text) {
        std::borrow::Cow::Borrowed(_) => text.clone(),
        std::borrow::Cow::Owned(owned) => std::sync::Arc::from(owned),
    }
}

/// A named source text that miette reads through its [`LineIndex`]: the lines of a span are
/// found by binary search. miette's own sources scan the text from its start for every label,
/// so drawing N diagnostics of one file cost O(N × file size) (20,000 errors: 21 s).
pub struct IndexedSource {
    name: String,
    language: Option<&'static str>,
    text: std::sync::Arc<str>,
    index: std::sync::OnceLock<LineIndex>,
}

impl IndexedSource {
    /// `text` as miette draws it ([`drawable`]), indexed on first use.
    pub fn new(name: impl Into<String>, text: &std::sync::Arc<str>) -> IndexedSource {
        IndexedSource { name: name.into(), language: None, text: drawable_arc(text), index: std::sync::OnceLock::new() }
    }

    /// With the syntax-highlighting language miette is told about.
    pub fn with_language(mut self, language: &'static str) -> IndexedSource {
        self.language = Some(language);
        self
    }

    /// The text (a lone `\r` drawn as `\n`).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn index(&self) -> &LineIndex {
        self.index.get_or_init(|| LineIndex::new(&self.text))
    }
}

impl std::fmt::Debug for IndexedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedSource").field("name", &self.name).field("len", &self.text.len()).finish()
    }
}

impl miette::SourceCode for IndexedSource {
    /// What miette's `str` source returns (the same lines, line and column), found through the
    /// index.
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let (start, end) = (span.offset(), span.offset() + span.len());
        if end > self.text.len() {
            return Err(miette::MietteError::OutOfBounds);
        }
        let index = self.index();
        let start_line = index.line_of(start);
        let end_line = index.line_of(end.saturating_sub(1).max(start));
        let first_line = start_line.saturating_sub(context_lines_before);
        let last_line = (end_line + context_lines_after).min(index.line_count() - 1);
        let line_begin = index.line_start(start_line).unwrap_or(0);
        let (data_start, column) = if context_lines_before == 0 {
            (start, start - line_begin)
        } else {
            (index.line_start(first_line).unwrap_or(0), 0)
        };
        let data_end = if context_lines_after == 0 {
            // miette stops right after the span (at least one byte: the header reads its line).
            end.max(start + 1).min(self.text.len())
        } else {
            index.line_start(last_line + 1).unwrap_or(self.text.len()).max(end)
        };
        let contents = miette::MietteSpanContents::new_named(
            self.name.clone(),
            &self.text.as_bytes()[data_start..data_end],
            miette::SourceSpan::new(data_start.into(), data_end - data_start),
            if context_lines_before == 0 { start_line } else { first_line },
            column,
            last_line,
        );
        Ok(Box::new(match self.language {
            Some(language) => contents.with_language(language),
            None => contents,
        }))
    }
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Byte length of the token starting at `offset`: an identifier or number, a quoted string, or
/// one character. Rhai positions mark only where an error starts; this gives the label a width.
pub fn token_len(text: &str, offset: usize) -> usize {
    let Some(rest) = text.get(offset..) else {
        return 0;
    };
    let mut chars = rest.char_indices();
    let Some((_, first)) = chars.next() else {
        return 0;
    };
    if first.is_alphanumeric() || first == '_' {
        return rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
    }
    if first == '"' || first == '\'' || first == '`' {
        let mut escaped = false;
        for (index, c) in chars {
            if c == '\n' {
                return index;
            }
            if !escaped && c == first {
                return index + c.len_utf8();
            }
            escaped = c == '\\' && !escaped;
        }
        return rest.find('\n').unwrap_or(rest.len());
    }
    first.len_utf8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_and_offsets_count_bytes() {
        let text = "ab\nçé x\nlast";
        let index = LineIndex::new(text);
        let x = text.find('x').unwrap();
        assert_eq!(index.line_column(text, x), (2, 4));
        assert_eq!(index.offset_of(text, 2, 4), x);
        assert_eq!(index.line_column(text, 0), (1, 1));
        assert_eq!(index.offset_of(text, 3, 1), text.find("last").unwrap());
        assert_eq!(index.offset_of(text, 9, 1), text.len());
        assert_eq!(index.offset_of(text, 1, 99), 2);
    }

    #[test]
    fn lone_carriage_returns_and_crlf_break_lines() {
        for text in ["ab\rçé x\rlast", "ab\r\nçé x\r\nlast", "ab\nçé x\nlast"] {
            let index = LineIndex::new(text);
            let x = text.find('x').unwrap_or_default();
            assert_eq!(index.line_column(text, x), (2, 4), "{text:?}");
            assert_eq!(index.offset_of(text, 2, 4), x, "{text:?}");
            assert_eq!(index.offset_of(text, 3, 1), text.find("last").unwrap_or_default(), "{text:?}");
            assert_eq!(index.offset_of(text, 1, 99), 2, "clamped before the break: {text:?}");
        }
    }

    #[test]
    fn indexed_sources_read_spans_like_mietes_own_sources() {
        use miette::SourceCode;
        for text in ["ab\ncd é\n\nlast line\n", "one line only", "x\r\ny\r\nz", "\n\n\n", "tail without newline\nend"]
        {
            let shared: std::sync::Arc<str> = std::sync::Arc::from(text);
            let indexed = IndexedSource::new("f", &shared);
            // Character boundaries, but not the middle of a `\r\n` (no label points there).
            let inside_crlf = |o: usize| o > 0 && text.as_bytes().get(o - 1..=o) == Some(b"\r\n");
            let offsets: Vec<usize> =
                (0..=text.len()).filter(|o| text.is_char_boundary(*o) && !inside_crlf(*o)).collect();
            for &start in &offsets {
                for &end in offsets.iter().filter(|end| **end >= start) {
                    let span = miette::SourceSpan::new(start.into(), end - start);
                    for (before, after) in [(0, 0), (1, 1), (2, 2)] {
                        let expected = text.read_span(&span, before, after);
                        let actual = indexed.read_span(&span, before, after);
                        // The calls miette makes: (0, 0) for a header, (n, n) for a snippet.
                        // Where the contents start, on which line and column: what the snippet's
                        // gutter and header show. (How many lines follow a span ending in a line
                        // break differs by one from miette's own scan; that is only context.)
                        let view = |c: &dyn miette::SpanContents<'_>| (c.span().offset(), c.line(), c.column());
                        match (expected, actual) {
                            (Ok(expected), Ok(actual)) => {
                                let case = format!("{text:?} {start}..{end} ({before}, {after})");
                                assert_eq!(view(&*actual), view(&*expected), "{case}");
                                let covered = actual.span().offset() + actual.span().len();
                                assert!(covered >= end && actual.data().len() == actual.span().len(), "{case}");
                            }
                            (expected, actual) => {
                                assert_eq!(expected.is_ok(), actual.is_ok(), "{text:?} {start}..{end}")
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn token_lengths() {
        let text = "let naïve = \"a\\\"b\" + 1;";
        assert_eq!(token_len(text, 4), "naïve".len());
        assert_eq!(token_len(text, text.find('"').unwrap()), "\"a\\\"b\"".len());
        assert_eq!(token_len(text, text.find('+').unwrap()), 1);
        assert_eq!(token_len(text, text.len()), 0);
    }
}
