//! Errors that point into a file the operator gave us: path, line, column and a snippet.

use std::path::Path;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// A JSON file that does not parse.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{path}:{line}:{column}: {message}")]
#[diagnostic(code(salvage::input::json_syntax), help("the file is not valid JSON; fix it and run the command again"))]
pub struct JsonSyntaxError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    #[source_code]
    pub source_code: NamedSource<String>,
    #[label("here")]
    pub span: SourceSpan,
}

impl JsonSyntaxError {
    pub fn new(path: &Path, text: &str, error: &serde_json::Error) -> JsonSyntaxError {
        let (line, column) = (error.line(), error.column());
        let offset = byte_offset(text, line, column);
        JsonSyntaxError {
            path: path.display().to_string(),
            line,
            column,
            message: error.to_string().split(" at line ").next().unwrap_or_default().to_owned(),
            source_code: NamedSource::new(path.display().to_string(), text.to_owned()),
            span: SourceSpan::new(offset.into(), usize::from(offset < text.len())),
        }
    }
}

/// Byte offset of a 1-based line and column (serde_json counts columns in bytes), clamped to
/// the text.
pub fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize =
        text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>().min(text.len());
    let mut offset = (line_start + column.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A file that could not be read at all.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("cannot read {path}: {source}")]
#[diagnostic(code(salvage::input::unreadable))]
pub struct UnreadableFile {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_lines_and_columns() {
        let text = "{\n  \"id\": 1,\n  oops\n}";
        assert_eq!(&text[byte_offset(text, 3, 3)..byte_offset(text, 3, 7)], "oops");
        assert_eq!(byte_offset(text, 99, 99), text.len());
        let error = serde_json::from_str::<serde_json::Value>(text).err();
        let error = error.map(|e| JsonSyntaxError::new(Path::new("run.json"), text, &e));
        assert_eq!(error.map(|e| (e.line, e.column)), Some((3, 3)));
    }
}
