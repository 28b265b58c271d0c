//! Errors that point into a file the operator gave us: path, line, column and a snippet.

use std::path::Path;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// A JSON file that does not parse.
///
/// The snippet is shown only when the file starts like JSON (`{` or `[`): a file that is not
/// JSON at all — a symlink to `/etc/passwd` given to `import` — is named, never quoted.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{path}:{line}:{column}: {message}")]
#[diagnostic(code(salvage::input::json_syntax), help("{help}"))]
pub struct JsonSyntaxError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: String,
    #[source_code]
    pub source_code: Option<NamedSource<String>>,
    #[label("here")]
    pub span: Option<SourceSpan>,
}

impl JsonSyntaxError {
    pub fn new(path: &Path, text: &str, error: &serde_json::Error) -> JsonSyntaxError {
        let offset = byte_offset(text, error.line(), error.column());
        // serde_json counts lines by `\n` only; people (and editors) also break lines at a lone
        // `\r`, so the position shown is recomputed from the offset.
        let (line, column) = crate::policy::source::LineIndex::new(text).line_column(text, offset);
        let message = error.to_string().split(" at line ").next().unwrap_or_default().to_owned();
        let looks_like_json = text.trim_start().starts_with(['{', '[']);
        if !looks_like_json {
            return JsonSyntaxError {
                path: path.display().to_string(),
                line: line as usize,
                column: column as usize,
                message: format!("{message}: the file is not JSON (a run record starts with `{{`)"),
                help: "give salvage run records (`<runId>.json`), traces or bundles".to_owned(),
                source_code: None,
                span: None,
            };
        }
        JsonSyntaxError {
            path: path.display().to_string(),
            line: line as usize,
            column: column as usize,
            message,
            help: "the file is not valid JSON; fix it and run the command again".to_owned(),
            source_code: Some(NamedSource::new(
                path.display().to_string(),
                crate::policy::source::drawable(text).into_owned(),
            )),
            span: Some(SourceSpan::new(offset.into(), usize::from(offset < text.len()))),
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

    #[test]
    fn cr_only_line_breaks_count_as_lines() {
        let text = "{\r  \"id\": 1,\r  oops\r}";
        let error = serde_json::from_str::<serde_json::Value>(text).err();
        let error = error.map(|e| JsonSyntaxError::new(Path::new("run.json"), text, &e));
        assert_eq!(error.map(|e| (e.line, e.column)), Some((3, 3)));
    }

    #[test]
    fn a_file_that_is_not_json_is_not_quoted() {
        let text = "root:x:0:0:root:/root:/bin/bash\n";
        let error = serde_json::from_str::<serde_json::Value>(text).err();
        let error = error.map(|e| JsonSyntaxError::new(Path::new("passwd.json"), text, &e));
        assert!(error.as_ref().is_some_and(|e| e.source_code.is_none() && e.span.is_none()));
        assert!(error.is_some_and(|e| !e.to_string().contains("root")));
    }
}
