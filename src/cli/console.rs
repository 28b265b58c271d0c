//! The CLI's output layer. Everything the binary prints goes through [`Console`]:
//! machine output on stdout, people's messages and progress on stderr, colour only when the
//! stream is a terminal and `NO_COLOR` is unset (anstream decides).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

use anstream::AutoStream;
use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::limits::MAX_JSON_INDENT;
use crate::model::RunStatus;
use crate::model::json_text::PrettyJson;

/// `serde_json::to_string_pretty`, except that indentation stops growing after
/// [`MAX_JSON_INDENT`] levels: the output of deeply nested data stays linear in its size.
pub fn pretty_json<T: Serialize + ?Sized>(value: &T) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, PrettyJson::capped(MAX_JSON_INDENT));
    value.serialize(&mut serializer).map_err(std::io::Error::other)?;
    String::from_utf8(bytes).map_err(std::io::Error::other)
}

/// Turns compact JSON (serde_json's compact output: no whitespace outside strings) into the
/// text [`pretty_json`] writes for the same value, byte for byte, as it streams through: a
/// document too large to hold in memory is written pretty without being built.
pub struct PrettyJsonWriter<W: Write> {
    out: W,
    buffer: Vec<u8>,
    level: usize,
    in_string: bool,
    escaped: bool,
    /// A bracket was just opened: the next byte tells an empty container from a first item.
    opened: bool,
}

/// Bytes [`PrettyJsonWriter`] gathers before writing them on.
const PRETTY_BUFFER: usize = 256 * 1024;

impl<W: Write> PrettyJsonWriter<W> {
    pub fn new(out: W) -> PrettyJsonWriter<W> {
        PrettyJsonWriter {
            out,
            buffer: Vec::with_capacity(PRETTY_BUFFER + 1024),
            level: 0,
            in_string: false,
            escaped: false,
            opened: false,
        }
    }

    fn newline(&mut self) {
        self.buffer.push(b'\n');
        for _ in 0..self.level.min(MAX_JSON_INDENT) {
            self.buffer.extend_from_slice(b"  ");
        }
    }

    /// A value starts: on its own line when it is the first item of a container.
    fn value_starts(&mut self) {
        if std::mem::take(&mut self.opened) {
            self.newline();
        }
    }

    /// Writes what is buffered and gives the writer back.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&self.buffer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for PrettyJsonWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.in_string {
                // Copied as is up to the closing quote (an escaped quote does not close).
                if std::mem::take(&mut self.escaped) {
                    self.buffer.push(rest[0]);
                    rest = &rest[1..];
                    continue;
                }
                let taken = match memchr::memchr2(b'"', b'\\', rest) {
                    None => rest.len(),
                    Some(index) if rest[index] == b'"' => {
                        self.in_string = false;
                        index + 1
                    }
                    Some(index) => {
                        self.escaped = true;
                        index + 1
                    }
                };
                self.buffer.extend_from_slice(&rest[..taken]);
                rest = &rest[taken..];
                continue;
            }
            let byte = rest[0];
            rest = &rest[1..];
            match byte {
                b'{' | b'[' => {
                    self.value_starts();
                    self.buffer.push(byte);
                    self.level += 1;
                    self.opened = true;
                }
                b'}' | b']' => {
                    self.level = self.level.saturating_sub(1);
                    if !std::mem::take(&mut self.opened) {
                        self.newline();
                    }
                    self.buffer.push(byte);
                }
                b',' => {
                    self.buffer.push(b',');
                    self.newline();
                }
                b':' => self.buffer.extend_from_slice(b": "),
                b'"' => {
                    self.value_starts();
                    self.buffer.push(b'"');
                    self.in_string = true;
                }
                _ => {
                    self.value_starts();
                    self.buffer.push(byte);
                }
            }
        }
        if self.buffer.len() >= PRETTY_BUFFER {
            self.out.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        self.out.flush()
    }
}

pub struct Console {
    out: AutoStream<std::io::Stdout>,
    err: AutoStream<std::io::Stderr>,
    /// Errors as JSON lines on stderr (`--log-format json`), for log collectors.
    json_errors: bool,
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    pub fn new() -> Console {
        Console {
            out: AutoStream::auto(std::io::stdout()),
            err: AutoStream::auto(std::io::stderr()),
            json_errors: false,
        }
    }

    /// Errors on stderr as one JSON object per line (`--log-format json`) instead of drawn.
    pub fn with_json_errors(mut self, json_errors: bool) -> Console {
        self.json_errors = json_errors;
        self
    }

    /// An error on its way to the operator: drawn like rustc's (colour at a terminal), or one
    /// JSON line under `--log-format json`.
    pub fn report(&mut self, error: &super::CliError) {
        if self.json_errors {
            let mut line = crate::diagnostics::to_json(error.report.as_ref(), "ERROR");
            line["fields"]["exit_code"] = (error.failure as u8).into();
            let _ = writeln!(self.err, "{line}");
        } else {
            let colour = self.stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let _ = write!(self.err, "{}", error.render(colour));
        }
    }

    /// Whether stderr is an interactive terminal (progress bars, prompts).
    pub fn stderr_is_terminal(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    /// Whether colour will actually be written to stdout.
    pub fn colours_stdout(&self) -> bool {
        !matches!(self.out.current_choice(), anstream::ColorChoice::Never)
    }

    /// Pretty-printed JSON on stdout, and nothing else.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> std::io::Result<()> {
        let text = pretty_json(value)?;
        writeln!(self.out, "{text}")
    }

    /// A JSON document on stdout, written as compact JSON into the returned writer and
    /// printed as [`Console::json`] prints it (call [`Console::end_json_stream`] with it
    /// after the last byte). JSON holds no ANSI styles, so it goes to stdout directly.
    pub fn json_stream(&mut self) -> std::io::Result<PrettyJsonWriter<std::io::StdoutLock<'static>>> {
        self.out.flush()?;
        Ok(PrettyJsonWriter::new(std::io::stdout().lock()))
    }

    /// Ends a document started with [`Console::json_stream`] (its final newline).
    pub fn end_json_stream(&mut self, writer: PrettyJsonWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()> {
        let mut out = writer.finish()?;
        out.write_all(b"\n")?;
        out.flush()
    }

    /// A line on stdout (may contain ANSI styles; they are stripped when not wanted).
    pub fn line(&mut self, text: impl AsRef<str>) -> std::io::Result<()> {
        writeln!(self.out, "{}", text.as_ref())
    }

    /// Raw text on stdout, as is.
    pub fn text(&mut self, text: impl AsRef<str>) -> std::io::Result<()> {
        write!(self.out, "{}", text.as_ref())
    }

    /// A note for people on stderr.
    pub fn note(&mut self, text: impl AsRef<str>) {
        let style = Style::new().bold();
        let _ = writeln!(self.err, "{style}note{style:#}: {}", text.as_ref());
    }

    /// A warning on stderr.
    pub fn warn(&mut self, text: impl AsRef<str>) {
        let style = Style::new().bold().fg_color(Some(AnsiColor::Yellow.into()));
        let _ = writeln!(self.err, "{style}warning{style:#}: {}", text.as_ref());
    }

    /// An error line on stderr (for problems that do not stop the command).
    pub fn error(&mut self, text: impl AsRef<str>) {
        let style = Style::new().bold().fg_color(Some(AnsiColor::Red.into()));
        let _ = writeln!(self.err, "{style}error{style:#}: {}", text.as_ref());
    }

    /// Pre-rendered text on stderr (diagnostics).
    pub fn stderr_text(&mut self, text: impl AsRef<str>) {
        let _ = write!(self.err, "{}", text.as_ref());
    }

    /// A progress bar on stderr, drawn only when stderr is a terminal and there is enough
    /// work to be worth showing.
    pub fn progress(&self, len: u64, message: &'static str) -> ProgressBar {
        if !self.stderr_is_terminal() || len < 50 {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar
    }
}

/// The colour a status is shown in.
pub fn status_style(status: &RunStatus) -> Style {
    let colour = match status {
        RunStatus::Completed => AnsiColor::Green,
        RunStatus::Failed => AnsiColor::Red,
        RunStatus::WaitingForApproval | RunStatus::Paused => AnsiColor::Yellow,
        RunStatus::Cancelled => AnsiColor::BrightBlack,
        RunStatus::Running | RunStatus::Pending => AnsiColor::Cyan,
        RunStatus::Other(_) => AnsiColor::Magenta,
    };
    Style::new().fg_color(Some(colour.into()))
}

/// `text` in `style`.
pub fn paint(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

/// A bold header line.
pub fn heading(text: impl std::fmt::Display) -> String {
    paint(Style::new().bold(), text)
}

/// Left-aligned columns. Widths are measured on the text without styling, so styled cells
/// (colours) still line up.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Table {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Adds a row whose cells carry a style.
    pub fn styled_row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    /// The table as lines (header first, bold).
    pub fn render(&self) -> Vec<String> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, (cell, _)) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut lines = Vec::with_capacity(self.rows.len() + 1);
        let bold = Style::new().bold();
        let header: Vec<(String, Style)> = self.header.iter().map(|h| (h.clone(), bold)).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (index, (cell, style)) in row.iter().enumerate().take(columns) {
                let last = index + 1 == columns;
                line.push_str(&paint(*style, cell));
                if !last {
                    let pad = widths[index] - cell.chars().count() + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            lines.push(line.trim_end().to_owned());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_styles() {
        let mut table = Table::new(["ID", "STATUS"]);
        table.styled_row(vec![("run-1".into(), Style::new()), ("failed".into(), status_style(&RunStatus::Failed))]);
        table.styled_row(vec![("a-much-longer-id".into(), Style::new()), ("completed".into(), Style::new())]);
        let plain: Vec<String> = table.render().iter().map(|l| anstream::adapter::strip_str(l).to_string()).collect();
        assert_eq!(plain, ["ID                STATUS", "run-1             failed", "a-much-longer-id  completed"]);
    }

    #[test]
    fn pretty_json_is_serde_json_pretty_until_the_indentation_cap() {
        let shallow = serde_json::json!({"a": [1, {"b": []}, {}], "c": {"d": null}, "e": "x"});
        assert_eq!(pretty_json(&shallow).ok(), serde_json::to_string_pretty(&shallow).ok());

        // 100 levels: serde_json's pretty output indents the innermost value by 200 spaces.
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let text = pretty_json(&deep).unwrap_or_default();
        let widest = text.lines().map(|line| line.len() - line.trim_start().len()).max();
        assert_eq!(widest, Some(2 * MAX_JSON_INDENT));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).ok(), Some(deep), "still the same JSON");
    }

    #[test]
    fn compact_json_streamed_pretty_is_pretty_json_byte_for_byte() {
        let mut deep = serde_json::json!({"k": "v"});
        for level in 0..(MAX_JSON_INDENT + 5) {
            deep = serde_json::json!({"level": level, "inner": [deep, [], {}]});
        }
        let value = serde_json::json!([
            {"s": "quote \" brace } bracket ] comma , colon : backslash \\ end\\", "u": "é ✓ \u{1}"},
            [], {}, [[]], [{}], null, true, false, -1.5e-7, 12345678901234567890u64, 0.1,
            {"empty": {}, "list": [1, [2, [3, []]]], "text": "a\nb\tc"},
            deep
        ]);
        let expected = pretty_json(&value).unwrap_or_default();
        let compact = serde_json::to_vec(&value).unwrap_or_default();
        for piece in [1, 2, 3, 7, 64, compact.len()] {
            let mut writer = PrettyJsonWriter::new(Vec::new());
            for chunk in compact.chunks(piece) {
                writer.write_all(chunk).unwrap_or_else(|e| panic!("{e}"));
            }
            let text = writer.finish().map(String::from_utf8).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(text.ok().as_deref(), Some(expected.as_str()), "written {piece} bytes at a time");
        }
    }
}
