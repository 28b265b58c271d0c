//! Diagnostics of policy files: a stable code, the file, line, column and byte span.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::source::{LineIndex, Span};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fatal: the file or set is refused.
    Error,
    /// Worth fixing, never fatal.
    Warning,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A problem in a policy file, located precisely.
#[derive(Debug, Clone)]
pub struct PolicyDiagnostic {
    /// Stable code, `R0xx` (see [`CODES`]).
    pub code: &'static str,
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line and character column (0 when the problem has no position, e.g. I/O).
    pub line: u32,
    pub column: u32,
    /// Byte span in the file, for labels.
    pub span: Option<Span>,
    pub message: String,
    /// Text of the label under the span.
    pub label: String,
    pub help: Option<String>,
    /// The file's text, for rendering.
    pub source: Option<Arc<str>>,
}

/// One entry of the policy code table.
#[derive(Debug, Clone, Copy)]
pub struct CodeInfo {
    pub code: &'static str,
    pub title: &'static str,
    pub explanation: &'static str,
}

/// Every policy diagnostic code, with its long explanation (`salvage explain R001`).
pub const CODES: &[CodeInfo] = &[
    CodeInfo {
        code: "R001",
        title: "Rhai syntax error in a policy file",
        explanation: "The policy file is not valid Rhai. The diagnostic points at the character where the \
parser gave up; the actual mistake is often just before it (a missing `;`, `)` or `}`).\n\n\
Example:\n\n    fn requires_approval(step, ctx {\n        true\n    }\n\n\
Fix the syntax; `salvage check --policies DIR` re-checks every file.",
    },
    CodeInfo {
        code: "R002",
        title: "`import` is not allowed in policies",
        explanation: "Policies run in a sandbox that cannot load modules: `import` could read files from \
disk and would make a decision depend on something the policy digest does not cover. Every `.rhai` file \
of the policy directory is loaded anyway, and a function defined in one file can be named by any \
playbook, so copy the helper function into the directory instead of importing it.",
    },
    CodeInfo {
        code: "R003",
        title: "`eval` is not allowed in policies",
        explanation: "`eval` runs text as code. A policy must be readable and checkable before it runs, so \
the sandbox disables the keyword. Write the code out, or choose between fixed functions with `if`/`switch`.",
    },
    CodeInfo {
        code: "R004",
        title: "only `fn` and `const` are allowed at the top level of a policy file",
        explanation: "A policy file defines hooks (functions) and constants, nothing else. Top-level \
statements would run on every load and could carry state between decisions; salvage calls hooks \
without running the file's top level. Constants must be literal values (`const LIMIT = 3;`, \
`const TEAMS = [\"sre\"];`) so they are known without running code.\n\n\
Move the statement into a function, or make it a `const` with a literal value.",
    },
    CodeInfo {
        code: "R005",
        title: "undefined variable in a policy",
        explanation: "The sandbox compiles policies in strict-variables mode: every variable must be a \
function parameter, a `let` or a `const` in scope. Rhai functions do not see variables of the caller, \
so a hook reads everything from its parameters (`step`, `ctx`); the file's constants are read as \
`global::NAME`.",
    },
    CodeInfo {
        code: "R006",
        title: "policy file or directory cannot be read",
        explanation: "The policy directory or one of its `.rhai` files could not be read (missing, \
permission denied, not UTF-8, or larger than the limit). Nothing in the set is used until every file \
loads, so a decision never silently falls back to a partial policy set.",
    },
    CodeInfo {
        code: "R007",
        title: "the same function is defined in two policy files",
        explanation: "Hooks are resolved by name and number of parameters across the whole policy \
directory. Two files defining `approvers(step, ctx)` would make the choice depend on file order. \
Rename one of them or delete the duplicate.",
    },
    CodeInfo {
        code: "R008",
        title: "a policy calls a function that nothing defines",
        explanation: "Rhai looks functions up only when a call runs, so a policy that calls a function no \
file of the set defines (a helper that was renamed, deleted or never written) would load and then fail \
on every incident that reaches the call: the hook fails closed, and every step of every such plan waits \
for a person. salvage checks every call when the set loads instead. A call is fine when the function is \
defined, with that many parameters, in any `.rhai` file of the policy directory (private functions \
included), or is one salvage or Rhai provides (`salvage policy defs` lists them with their parameters).\n\n\
Example (classify.rhai calls a helper nobody wrote):\n\n    fn classify(report, ctx) {\n        if \
is_throttled(ctx) { \"rate_limited\" } else { \"tool_failure\" }\n    }\n\n\
Define `fn is_throttled(ctx) { ... }` in one of the policy files, or fix the name.",
    },
];

/// The long explanation of a policy code.
pub fn explain(code: &str) -> Option<&'static str> {
    code_info(code).map(|info| info.explanation)
}

/// A policy code's entry (any case).
pub fn code_info(code: &str) -> Option<&'static CodeInfo> {
    CODES.iter().find(|info| info.code.eq_ignore_ascii_case(code))
}

impl PolicyDiagnostic {
    /// An error located at `span` of `source`.
    pub(crate) fn at(
        code: &'static str,
        file: PathBuf,
        source: &Arc<str>,
        index: &LineIndex,
        span: Span,
        message: String,
        label: String,
    ) -> PolicyDiagnostic {
        let (line, column) = index.line_column(source, span.start);
        PolicyDiagnostic {
            code,
            severity: Severity::Error,
            file,
            line,
            column,
            span: Some(span),
            message,
            label,
            help: None,
            source: Some(source.clone()),
        }
    }

    /// An error about a whole file or directory (no position).
    pub(crate) fn unlocated(code: &'static str, file: PathBuf, message: String) -> PolicyDiagnostic {
        PolicyDiagnostic {
            code,
            severity: Severity::Error,
            file,
            line: 0,
            column: 0,
            span: None,
            message,
            label: String::new(),
            help: None,
            source: None,
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> PolicyDiagnostic {
        self.help = Some(help.into());
        self
    }
}

impl std::fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]: {} ({}", self.severity.as_str(), self.code, self.message, self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_explained() {
        let mut seen = std::collections::HashSet::new();
        for info in CODES {
            assert!(seen.insert(info.code), "duplicate {}", info.code);
            assert!(info.explanation.len() > 80, "{} needs a real explanation", info.code);
        }
        assert!(explain("r004").is_some());
        assert!(explain("R999").is_none());
    }
}
