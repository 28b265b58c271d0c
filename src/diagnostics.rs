//! Rendering diagnostics without ever failing: every error salvage prints goes through
//! [`render`], which reframes source snippets that miette cannot draw.
//!
//! miette draws a label by padding to its column, and Rust's formatter refuses (panics on) a
//! width over 65,535: an error past column 65,535 of a minified one-line file, or inside a
//! 65,536-character YAML scalar, would panic the renderer. A snippet whose labelled line is
//! longer than [`MAX_SNIPPET_LINE`] is therefore cut to a window around the primary label,
//! with `…` where it was cut and the real line and column in its header. Related diagnostics
//! and causes are reframed the same way.

use std::fmt;

use miette::{Diagnostic, GraphicalReportHandler, LabeledSpan, MietteError, SourceCode, SourceSpan, SpanContents};

/// Longest labelled line drawn as it is (bytes).
pub const MAX_SNIPPET_LINE: usize = 400;

/// Bytes of context kept on each side of a label in a reframed line.
const WINDOW: usize = 120;

/// Longest stretch of a label drawn in a reframed line (bytes).
const MAX_LABEL: usize = 160;

/// Renders `diagnostic` with `handler`; long lines are reframed, and a renderer error falls back
/// to the plain message.
pub fn render(handler: &GraphicalReportHandler, diagnostic: &dyn Diagnostic) -> String {
    let reframed = Reframed::new(diagnostic);
    let mut out = String::new();
    if handler.render_report(&mut out, &reframed).is_err() {
        out = match diagnostic.code() {
            Some(code) => format!("{code}: {diagnostic}\n"),
            None => format!("error: {diagnostic}\n"),
        };
    }
    out
}

/// A diagnostic as drawn: the original, except for a source cut to a window when a labelled
/// line is too long to draw.
struct Reframed<'d> {
    inner: &'d dyn Diagnostic,
    window: Option<Window>,
    related: Vec<Reframed<'d>>,
    cause: Option<Box<Reframed<'d>>>,
}

/// A cut of one line of a source, around a label.
struct Window {
    name: Option<String>,
    language: Option<String>,
    text: String,
    /// 0-based line and byte column of the window's first byte in the original source.
    line: usize,
    column: usize,
    labels: Vec<LabeledSpan>,
}

impl<'d> Reframed<'d> {
    fn new(inner: &'d dyn Diagnostic) -> Reframed<'d> {
        Reframed {
            inner,
            window: inner.source_code().and_then(|source| window_for(source, inner.labels()?.collect())),
            related: inner.related().map(|related| related.map(Reframed::new).collect()).unwrap_or_default(),
            cause: inner.diagnostic_source().map(|cause| Box::new(Reframed::new(cause))),
        }
    }
}

/// The longest line a snippet of the span would draw: the lines it covers and one line of
/// context on each side, as the handler draws them (bytes).
fn longest_line(source: &dyn SourceCode, span: &SourceSpan) -> Option<usize> {
    let contents = source.read_span(span, 1, 1).ok()?;
    contents.data().split(|b| *b == b'\n' || *b == b'\r').map(<[u8]>::len).max()
}

fn window_for(source: &dyn SourceCode, labels: Vec<LabeledSpan>) -> Option<Window> {
    if !labels.iter().any(|label| longest_line(source, label.inner()).is_some_and(|len| len > MAX_SNIPPET_LINE)) {
        return None;
    }
    let primary = labels.iter().find(|label| label.primary()).or_else(|| labels.first())?;
    let at = source.read_span(primary.inner(), 0, 0).ok()?;
    let (line, column) = (at.line(), at.column());
    let offset = primary.offset();
    // The window's start: up to WINDOW bytes before the label, on its line.
    let mut start = offset - column.min(WINDOW).min(offset);
    // From the window's start through the label, and the rest of its line (one line of
    // context after: what follows the line's end is cut below).
    let through_label = SourceSpan::new(start.into(), offset + primary.len() - start);
    let from_start = source.read_span(&through_label, 0, 1).ok()?;
    let mut bytes = from_start.data();
    // Not in the middle of a character.
    while let Some((first, rest)) = bytes.split_first()
        && (first & 0b1100_0000) == 0b1000_0000
        && start < offset
    {
        bytes = rest;
        start += 1;
    }
    let line_end = bytes.iter().position(|b| *b == b'\n' || *b == b'\r').unwrap_or(bytes.len());
    let label_len = primary.len().min(MAX_LABEL);
    let wanted = (offset - start) + label_len + WINDOW;
    let mut end = wanted.min(line_end);
    while end < line_end && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
        end += 1;
    }
    let cut_before = start > offset.saturating_sub(column);
    let cut_after = end < line_end;
    let prefix = if cut_before { "…" } else { "" };
    let mut text = format!("{prefix}{}", String::from_utf8_lossy(&bytes[..end]));
    if cut_after {
        text.push('…');
    }
    let shift = |original: usize| original - start + prefix.len();
    let window_end = start + end;
    let labels = labels
        .iter()
        .filter(|label| label.offset() >= start && label.offset() <= window_end)
        .map(|label| {
            let len = label.len().min(window_end - label.offset());
            let span = SourceSpan::new(shift(label.offset()).into(), len);
            if label.primary() {
                LabeledSpan::new_primary_with_span(label.label().map(str::to_owned), span)
            } else {
                LabeledSpan::new_with_span(label.label().map(str::to_owned), span)
            }
        })
        .collect();
    Some(Window {
        name: at.name().map(str::to_owned),
        language: at.language().map(str::to_owned),
        text,
        line,
        column: column.saturating_sub(offset - start),
        labels,
    })
}

/// What [`Window`] hands the renderer: its text, placed at the original line and column.
struct Placed<'a> {
    inner: Box<dyn SpanContents<'a> + 'a>,
    name: Option<&'a str>,
    language: Option<&'a str>,
    line: usize,
    column: usize,
}

impl<'a> SpanContents<'a> for Placed<'a> {
    fn data(&self) -> &'a [u8] {
        self.inner.data()
    }
    fn span(&self) -> &SourceSpan {
        self.inner.span()
    }
    fn name(&self) -> Option<&str> {
        self.name
    }
    fn line(&self) -> usize {
        self.line
    }
    fn column(&self) -> usize {
        self.column
    }
    fn line_count(&self) -> usize {
        self.inner.line_count()
    }
    fn language(&self) -> Option<&str> {
        self.language
    }
}

impl SourceCode for Window {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        // The window is one line: context lines do not exist.
        let inner = self.text.as_str().read_span(span, context_lines_before, context_lines_after)?;
        // Columns within the window, after the `…` marker, continue the original line's.
        let column = if inner.line() == 0 {
            (self.column + inner.column()).saturating_sub(if self.text.starts_with('…') {
                '…'.len_utf8()
            } else {
                0
            })
        } else {
            inner.column()
        };
        Ok(Box::new(Placed {
            line: self.line + inner.line(),
            column,
            inner,
            name: self.name.as_deref(),
            language: self.language.as_deref(),
        }))
    }
}

impl fmt::Debug for Reframed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for Reframed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for Reframed<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl Diagnostic for Reframed<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.inner.severity()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.help()
    }
    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.url()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        match &self.window {
            Some(window) => Some(window),
            None => self.inner.source_code(),
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        match &self.window {
            Some(window) => Some(Box::new(window.labels.iter().cloned())),
            None => self.inner.labels(),
        }
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|related| related as &dyn Diagnostic)))
    }
    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.cause.as_deref().map(|cause| cause as &dyn Diagnostic)
    }
}

/// A diagnostic as one JSON object for log collectors (`--log-format json`): the shape of the
/// other log lines (`timestamp`, `level`, `target`, `fields`), with the code, the help, the
/// causes and every label's file, 1-based line and column.
pub fn to_json(diagnostic: &dyn Diagnostic, level: &str) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    fields.insert("message".into(), diagnostic.to_string().into());
    if let Some(code) = diagnostic.code() {
        fields.insert("code".into(), code.to_string().into());
    }
    if let Some(help) = diagnostic.help() {
        fields.insert("help".into(), help.to_string().into());
    }
    let labels = json_labels(diagnostic);
    if !labels.is_empty() {
        fields.insert("labels".into(), labels.into());
    }
    let mut causes = Vec::new();
    let mut cause = diagnostic
        .diagnostic_source()
        .map(|d| d.to_string())
        .or_else(|| std::error::Error::source(diagnostic).map(|e| e.to_string()));
    let mut source = std::error::Error::source(diagnostic);
    while let Some(text) = cause.take() {
        if causes.len() >= 16 {
            break;
        }
        causes.push(serde_json::Value::from(text));
        source = source.and_then(std::error::Error::source);
        cause = source.map(ToString::to_string);
    }
    if !causes.is_empty() {
        fields.insert("causes".into(), causes.into());
    }
    let related: Vec<serde_json::Value> =
        diagnostic.related().into_iter().flatten().take(64).map(|d| to_json(d, "ERROR")["fields"].clone()).collect();
    if !related.is_empty() {
        fields.insert("related".into(), related.into());
    }
    log_line(level, fields)
}

/// One JSON log line in the shape `tracing`'s JSON lines have (`timestamp`, `level`, `target`,
/// `fields`): what an error printed under `--log-format json` looks like.
pub fn log_line(level: &str, fields: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "timestamp": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "level": level,
        "target": "salvage",
        "fields": fields,
    })
}

/// Where each label points: the source's name, 1-based line and column, and its text.
fn json_labels(diagnostic: &dyn Diagnostic) -> Vec<serde_json::Value> {
    let Some(labels) = diagnostic.labels() else { return Vec::new() };
    let source = diagnostic.source_code();
    labels
        .take(64)
        .map(|label| {
            let mut object = serde_json::Map::new();
            if let Some(contents) = source.and_then(|source| source.read_span(label.inner(), 0, 0).ok()) {
                if let Some(name) = contents.name() {
                    object.insert("file".into(), name.into());
                }
                object.insert("line".into(), (contents.line() + 1).into());
                object.insert("column".into(), (contents.column() + 1).into());
            }
            object.insert("offset".into(), label.offset().into());
            object.insert("length".into(), label.len().into());
            if let Some(text) = label.label() {
                object.insert("label".into(), text.into());
            }
            serde_json::Value::Object(object)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::{GraphicalTheme, NamedSource};

    #[derive(Debug, thiserror::Error, Diagnostic)]
    #[error("broken")]
    #[diagnostic(code(test::broken))]
    struct Broken {
        #[source_code]
        text: NamedSource<String>,
        #[label("here")]
        span: SourceSpan,
        #[related]
        others: Vec<Broken>,
    }

    fn handler() -> GraphicalReportHandler {
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_links(false)
    }

    #[test]
    fn a_label_past_column_65535_is_drawn_in_a_window_with_its_real_position() {
        let text = format!("{{\"steps\": [\"{}\", oops]}}\nnext line", "x".repeat(70_000));
        let at = text.find("oops").unwrap_or_default();
        let broken = Broken {
            text: NamedSource::new("big.json", text.clone()),
            span: SourceSpan::new(at.into(), 4),
            others: vec![Broken {
                text: NamedSource::new("other.json", text.clone()),
                span: SourceSpan::new((at + 2).into(), 1),
                others: Vec::new(),
            }],
        };
        let out = render(&handler(), &broken);
        assert!(out.contains(&format!("[big.json:1:{}]", at + 1)), "the real line and column: {out}");
        assert!(out.contains("…") && out.contains("oops"), "{out}");
        assert!(out.contains(&format!("[other.json:1:{}]", at + 3)), "related diagnostics are reframed too: {out}");
        assert!(out.lines().all(|line| line.len() < 1_000), "no 70 KB line is printed: {out}");
    }

    #[test]
    fn short_lines_are_drawn_unchanged() {
        let text = "a: 1\nb: oops\n".to_owned();
        let broken = Broken {
            text: NamedSource::new("x.yaml", text.clone()),
            span: SourceSpan::new(8.into(), 4),
            others: Vec::new(),
        };
        let mut direct = String::new();
        handler().render_report(&mut direct, &broken).unwrap_or_default();
        assert_eq!(render(&handler(), &broken), direct);
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let text = format!("{}é{}", "é".repeat(40_000), "ü".repeat(40_000));
        let at = "é".len() * 40_000;
        let broken = Broken {
            text: NamedSource::new("utf8.yaml", text),
            span: SourceSpan::new(at.into(), 2),
            others: Vec::new(),
        };
        let out = render(&handler(), &broken);
        assert!(out.contains("utf8.yaml:1:"), "{out}");
        assert!(!out.contains('\u{fffd}'), "no broken characters: {out}");
    }
}
