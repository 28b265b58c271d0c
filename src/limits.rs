//! The bounds salvage puts on what it is given: file sizes, durations, names (the README's
//! "Limits" table lists them all). Every later module reads files and checks durations through
//! these helpers, so that a hostile input — a FIFO named `x.json`, a symlink to `/dev/zero`, a
//! 3 GiB sparse file, `timeout: 3650000d` — is refused with a message instead of hanging,
//! exhausting memory or overflowing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// Largest run record a `file:` store or `salvage import` reads, unless
/// [`MAX_RUN_BYTES_ENV`] says otherwise: generous (the largest recorded run is a few MiB), small
/// enough that one hostile file cannot take the machine's memory.
pub const DEFAULT_MAX_RUN_BYTES: u64 = 256 * 1024 * 1024;

/// Environment variable that sets the largest run record read (bytes, or with a `KiB`, `MiB`
/// or `GiB` suffix).
pub const MAX_RUN_BYTES_ENV: &str = "SALVAGE_MAX_RUN_BYTES";

/// Largest `salvage.yaml` read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Longest duration the playbook language and `salvage.yaml` accept (`timeout`, `duration`,
/// `backoff`, `default_timeout`, ...): 366 days. Anything longer is a typo or an attack (an
/// approval nobody can outwait, a `wait` that never ends), and deadlines computed from it stay
/// far inside every date type.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// [`MAX_DURATION`] as written in playbooks (`366d`).
pub const MAX_DURATION_TEXT: &str = "366d";

/// Longest approver name (bytes).
pub const MAX_APPROVER_NAME_BYTES: usize = 200;

/// Deepest run tree built (the root is level 1): lineage is user data, and a chain of 100,000
/// runs must cost what its first levels cost — in memory, in output and on the stack of every
/// derived `Clone`, `Drop`, `PartialEq` and `Serialize` of the nested nodes.
pub const MAX_TREE_DEPTH: usize = 40;

/// Most runs one run tree shows (breadth first); the rest are counted in `omittedRuns`.
pub const MAX_TREE_RUNS: usize = 1_000;

/// Deepest indentation of the pretty JSON the CLI prints (levels of two spaces): deeper values
/// are drawn at this indentation, so the output stays linear in its size.
pub const MAX_JSON_INDENT: usize = 32;

/// Deepest JSON (or policy) value salvage's own walks descend into: far beyond what the JSON
/// parser lets in (128 levels) plus what salvage wraps around it, so only a value built some
/// other way (a policy's result) reaches it; below it a walk sees `null`.
pub const MAX_VALUE_DEPTH: usize = 512;

/// Deepest indentation of a drawn run tree (levels of three columns): deeper runs are drawn at
/// this indentation after `(+N)`, N the levels not drawn.
pub const MAX_DRAWN_INDENT: usize = 64;

/// The largest run record to read: [`MAX_RUN_BYTES_ENV`] when it is set and valid, else
/// [`DEFAULT_MAX_RUN_BYTES`].
pub fn max_run_bytes() -> Result<u64, LimitError> {
    match std::env::var(MAX_RUN_BYTES_ENV) {
        Ok(text) => parse_byte_size(&text).ok_or(LimitError::BadSize { variable: MAX_RUN_BYTES_ENV, value: text }),
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_MAX_RUN_BYTES),
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(LimitError::BadSize { variable: MAX_RUN_BYTES_ENV, value: value.to_string_lossy().into_owned() })
        }
    }
}

/// `1048576`, `512KiB`, `256MiB`, `1GiB` (also `K`/`M`/`G`, `KB`/`MB`/`GB` as binary units);
/// at least 1 byte.
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit).filter(|bytes| *bytes > 0)
}

/// A limit given in the environment that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum LimitError {
    #[error("{variable}={value:?} is not a size")]
    #[diagnostic(
        code(salvage::limits::bad_size),
        help("write a number of bytes, optionally with KiB, MiB or GiB, e.g. 256MiB")
    )]
    BadSize { variable: &'static str, value: String },
}

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadRefused {
    /// The file system said no (missing, permission denied, ...).
    Io(io::Error),
    /// Not a regular file: a FIFO, socket, device or directory (after following symlinks).
    NotRegular { kind: &'static str },
    /// A symlink whose target does not exist, or a symlink loop.
    BrokenSymlink { reason: String },
    /// Larger than the limit: refused before reading anything.
    TooLarge { size: u64, limit: u64 },
}

impl ReadRefused {
    /// The underlying I/O error, when there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ReadRefused::Io(error) => Some(error),
            _ => None,
        }
    }

    /// Whether the file simply is not there (and no symlink claims it is).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadRefused::Io(error) if error.kind() == io::ErrorKind::NotFound)
    }

    /// As an I/O error (kind `InvalidInput` / `FileTooLarge` for the refusals), for callers
    /// that report I/O errors.
    pub fn into_io_error(self) -> io::Error {
        match self {
            ReadRefused::Io(error) => error,
            ReadRefused::TooLarge { .. } => io::Error::new(io::ErrorKind::FileTooLarge, self.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

impl fmt::Display for ReadRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadRefused::Io(error) => write!(f, "{error}"),
            ReadRefused::NotRegular { kind } => {
                write!(f, "it is a {kind}, not a regular file; only regular files are read")
            }
            ReadRefused::BrokenSymlink { reason } => write!(f, "it is a symlink that leads nowhere ({reason})"),
            ReadRefused::TooLarge { size, limit } => {
                write!(f, "it is {size} bytes, over the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ReadRefused {}

/// What a file system entry is, for messages.
pub fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
    }
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Opens `path` for reading without ever blocking on it: a FIFO opened for reading waits for a
/// writer, so it is opened non-blocking; whether the opened file is regular is then checked on
/// the open descriptor (no window between the check and the read).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32 | rustix::fs::OFlags::NOCTTY.bits() as i32);
    }
    options.open(path)
}

/// Why `path` cannot be opened: a dangling symlink or a loop is named as such; anything else
/// is the I/O error.
fn open_error(path: &Path, error: io::Error) -> ReadRefused {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link
        && (error.kind() == io::ErrorKind::NotFound
            || error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()))
    {
        let reason = match std::fs::read_link(path) {
            Ok(target) if error.kind() == io::ErrorKind::NotFound => format!("{} does not exist", target.display()),
            Ok(target) => format!("{} loops back on itself", target.display()),
            Err(_) => error.to_string(),
        };
        return ReadRefused::BrokenSymlink { reason };
    }
    ReadRefused::Io(error)
}

/// Reads a regular file (following symlinks) of at most `limit` bytes. A FIFO, socket, device or
/// directory, a dangling or looping symlink, or a file over the limit is refused without reading
/// its content (the size is checked before reading, so a sparse 3 GiB file costs nothing). A
/// file that grows past the limit while being read is refused too.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadRefused> {
    let file = open_nonblocking(path).map_err(|error| open_error(path, error))?;
    let metadata = file.metadata().map_err(ReadRefused::Io)?;
    if !metadata.is_file() {
        return Err(ReadRefused::NotRegular { kind: kind_of(&metadata.file_type()) });
    }
    if metadata.len() > limit {
        return Err(ReadRefused::TooLarge { size: metadata.len(), limit });
    }
    let capacity = usize::try_from(metadata.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(ReadRefused::Io)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > limit {
        return Err(ReadRefused::TooLarge { size: read, limit });
    }
    Ok(bytes)
}

/// [`read_regular_file`] as UTF-8 text; invalid UTF-8 is an `InvalidData` I/O error naming the
/// offset of the first bad byte.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, ReadRefused> {
    let bytes = read_regular_file(path, limit)?;
    String::from_utf8(bytes).map_err(|error| {
        ReadRefused::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is not UTF-8 (invalid byte at offset {})", error.utf8_error().valid_up_to()),
        ))
    })
}

/// Whether a directory entry is a symlink that leads nowhere (dangling or looping): such an
/// entry is neither a file nor a directory to `Path::is_file`, so listings that filter with it
/// would skip it silently.
pub fn is_broken_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) && std::fs::metadata(path).is_err()
}

/// A duration that is over [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} is longer than the maximum of {MAX_DURATION_TEXT}", describe_duration(*.0))]
pub struct DurationTooLong(pub Duration);

/// Checks a duration against [`MAX_DURATION`].
pub fn check_duration(duration: Duration) -> Result<Duration, DurationTooLong> {
    if duration > MAX_DURATION { Err(DurationTooLong(duration)) } else { Ok(duration) }
}

/// A duration as the playbook language writes it (`1h30m`, `500ms`).
pub fn describe_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = millis;
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// `now + duration`, or `None` when that is not a representable time. Durations that passed
/// [`check_duration`] never overflow; this is for the ones that did not (a plan written by
/// hand, a document from an older salvage).
pub fn deadline_after(now: time::OffsetDateTime, duration: Duration) -> Option<time::OffsetDateTime> {
    let duration = time::Duration::try_from(duration).ok()?;
    now.checked_add(duration)
}

/// How long to sleep for a requested duration: never longer than [`MAX_DURATION`] (a sleep
/// from an unchecked plan cannot block for ever).
pub fn bounded_sleep(duration: Duration) -> Duration {
    duration.min(MAX_DURATION)
}

/// Why an approver name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[diagnostic(
    code(salvage::approver_name),
    help("an approver is a person's name or handle, e.g. oncall-sre or alice@example.com")
)]
pub enum ApproverNameError {
    #[error("an approver name is empty")]
    Empty,
    #[error("approver name {0:?} is blank (whitespace only)")]
    Blank(String),
    #[error("approver name {name:?} has leading or trailing whitespace")]
    Padded { name: String },
    #[error("approver name {name:?} contains a control character")]
    Control { name: String },
    #[error("an approver name is {len} bytes long; the limit is {MAX_APPROVER_NAME_BYTES}")]
    TooLong { len: usize },
}

/// Checks one approver name, wherever it comes from (a policy's `approvers` hook, a playbook's
/// `approvers:` list, `approvals.default_approvers` in salvage.yaml, `--as` on the command
/// line, the runner answering an approval): not empty, not blank, no leading or trailing
/// whitespace (`" alice"` would never match `alice`), no control characters, at most
/// [`MAX_APPROVER_NAME_BYTES`] bytes.
pub fn validate_approver_name(name: &str) -> Result<(), ApproverNameError> {
    if name.is_empty() {
        return Err(ApproverNameError::Empty);
    }
    if name.trim().is_empty() {
        return Err(ApproverNameError::Blank(name.to_owned()));
    }
    if name.len() > MAX_APPROVER_NAME_BYTES {
        return Err(ApproverNameError::TooLong { len: name.len() });
    }
    if name.trim() != name {
        return Err(ApproverNameError::Padded { name: name.to_owned() });
    }
    if name.chars().any(char::is_control) {
        return Err(ApproverNameError::Control { name: name.to_owned() });
    }
    Ok(())
}

/// `30m`, `24h`, `7d`: a whole number and one of s, m, h, d, w.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration: expected a number and a unit, e.g. 24h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{text:?} is not a duration: the unit must be s, m, h, d or w (e.g. 30m, 24h, 7d)")),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// `--since`: a duration before now (`30m`, `24h`, `7d`) or an RFC 3339 timestamp.
pub fn parse_since(text: &str) -> Result<time::OffsetDateTime, String> {
    let text = text.trim();
    if let Some(at) = crate::model::json::parse_iso(text) {
        return Ok(at);
    }
    let duration = parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is neither a duration (a number and s, m, h, d or w, e.g. 24h) nor an RFC 3339 timestamp \
             (e.g. 2026-01-31T08:00:00Z)"
        )
    })?;
    let duration = check_duration(duration).map_err(|error| error.to_string())?;
    let duration = time::Duration::try_from(duration).map_err(|error| error.to_string())?;
    Ok(time::OffsetDateTime::now_utc() - duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("1048576"), Some(1 << 20));
        assert_eq!(parse_byte_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_byte_size("2 GiB"), Some(2 << 30));
        assert_eq!(parse_byte_size("64k"), Some(64 << 10));
        for bad in ["", "0", "MiB", "-1", "1.5GiB", "12 parsecs", "99999999999999999999GiB"] {
            assert_eq!(parse_byte_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_over_the_maximum_are_refused_and_deadlines_never_overflow() {
        assert!(check_duration(MAX_DURATION).is_ok());
        let over = MAX_DURATION + Duration::from_millis(1);
        assert_eq!(check_duration(over), Err(DurationTooLong(over)));
        assert!(DurationTooLong(over).to_string().contains("366d"), "{}", DurationTooLong(over));
        let now = time::OffsetDateTime::now_utc();
        assert!(deadline_after(now, MAX_DURATION).is_some_and(|at| at > now));
        assert_eq!(deadline_after(now, Duration::from_millis(u64::MAX)), None);
        assert_eq!(deadline_after(now, Duration::MAX), None);
        assert_eq!(bounded_sleep(Duration::from_millis(u64::MAX)), MAX_DURATION);
        assert_eq!(describe_duration(Duration::from_millis(5_400_500)), "1h30m500ms");
    }

    #[test]
    fn blank_and_padded_approver_names_are_refused() {
        for good in ["alice", "oncall-sre", "alice@example.com", "Ünal Öz"] {
            assert_eq!(validate_approver_name(good), Ok(()), "{good:?}");
        }
        assert_eq!(validate_approver_name(""), Err(ApproverNameError::Empty));
        assert_eq!(validate_approver_name(" "), Err(ApproverNameError::Blank(" ".into())));
        assert_eq!(validate_approver_name("\t\n"), Err(ApproverNameError::Blank("\t\n".into())));
        assert!(matches!(validate_approver_name(" alice"), Err(ApproverNameError::Padded { .. })));
        assert!(matches!(validate_approver_name("al\u{7}ice"), Err(ApproverNameError::Control { .. })));
        assert!(matches!(validate_approver_name(&"a".repeat(201)), Err(ApproverNameError::TooLong { len: 201 })));
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let regular = dir.path().join("run.json");
        std::fs::write(&regular, b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_regular_file(&regular, 2).ok(), Some(b"{}".to_vec()));
        assert!(matches!(read_regular_file(&regular, 1), Err(ReadRefused::TooLarge { size: 2, limit: 1 })));

        // A FIFO nobody writes to: reading it would block for ever.
        let fifo = dir.path().join("fifo.json");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_regular_file(&fifo, 1024), Err(ReadRefused::NotRegular { kind: "FIFO" })));

        let device = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &device).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_regular_file(&device, 1024), Err(ReadRefused::NotRegular { kind: "character device" })));

        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_regular_file(&dangling, 1024), Err(ReadRefused::BrokenSymlink { .. })));
        assert!(is_broken_symlink(&dangling) && !is_broken_symlink(&regular));

        let looping = dir.path().join("loop.json");
        std::os::unix::fs::symlink(&looping, &looping).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_regular_file(&looping, 1024), Err(ReadRefused::BrokenSymlink { .. })));

        // A sparse file far over the limit is refused from its size: nothing is read.
        let sparse = dir.path().join("sparse.json");
        let file = File::create(&sparse).unwrap_or_else(|e| panic!("{e}"));
        file.set_len(3 << 30).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(read_regular_file(&sparse, 1 << 20), Err(ReadRefused::TooLarge { size, .. }) if size == 3 << 30)
        );

        assert!(read_regular_file(&dir.path().join("none.json"), 10).is_err_and(|e| e.is_not_found()));
        assert!(matches!(read_regular_file(dir.path(), 10), Err(ReadRefused::NotRegular { kind: "directory" })));
    }
}
