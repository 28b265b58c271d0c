//! Policies: Rhai files whose functions (hooks) make salvage's decisions.
//!
//! This module loads and checks a policy directory ([`PolicySet::load`]) in the one sandboxed
//! engine ([`engine`]). What the hooks mean and how they are called belongs to the planner;
//! here a policy set is its compiled files, their digest and the functions they define, which
//! is what compiling a playbook needs (a `policy.NAME` reference must name a function with the
//! right number of parameters).

mod calls;
pub mod context;
pub mod diagnostic;
pub mod engine;
pub mod hooks;
pub mod kinds;
pub mod source;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, ParseError, ParseErrorType, Position, Stmt};
use sha2::{Digest, Sha256};

pub use context::DecisionContext;
pub use diagnostic::{CodeInfo, PolicyDiagnostic, Severity};
pub use hooks::{Approvers, CheckpointCandidate, Decision, Explanation, HookError};
use source::{LineIndex, Span, token_len};

/// File extension of policy files.
pub const POLICY_EXTENSION: &str = "rhai";

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_FILE_BYTES: usize = 512 * 1024;

/// One compiled policy file.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// The path it was loaded from (or the name given to [`PolicySet::from_sources`]).
    pub path: PathBuf,
    /// The file name, which orders the set and enters the digest.
    pub name: String,
    pub source: Arc<str>,
    /// Compiled with the file path as its source name, so run-time errors name the file.
    pub ast: Arc<AST>,
}

/// A function a policy file defines: a hook candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFunction {
    pub name: String,
    pub params: Vec<String>,
    /// Index of the defining file in [`PolicySet::files`].
    pub file_index: usize,
    pub file: PathBuf,
    /// Where the function's body starts (1-based line and character column).
    pub line: u32,
    pub column: u32,
}

impl PolicyFunction {
    pub fn arity(&self) -> usize {
        self.params.len()
    }
}

/// Every `.rhai` file of a directory, compiled, with the functions they define and a digest.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    dir: Option<PathBuf>,
    files: Vec<PolicyFile>,
    functions: Vec<PolicyFunction>,
    digest: String,
    complete: bool,
    /// Every file merged into one script: a hook may call helpers and read constants defined in
    /// any file of the set (names are unique across the set, see R007).
    combined: Arc<AST>,
    /// The incident kinds `classify` returns as literals or the files declare ([`kinds`]).
    incident_kinds: BTreeSet<String>,
}

/// A policy directory that did not load cleanly.
#[derive(Debug, Clone)]
pub struct PolicyLoadError {
    /// Every problem found, in file order.
    pub diagnostics: Vec<PolicyDiagnostic>,
    /// The files that did compile (useful to keep checking playbooks against; never to decide
    /// with: [`PolicySet::is_complete`] is false).
    pub partial: Box<PolicySet>,
}

impl std::fmt::Display for PolicyLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errors = self.diagnostics.len();
        write!(f, "the policy set has {errors} error{}", if errors == 1 { "" } else { "s" })?;
        if let Some(first) = self.diagnostics.first() {
            write!(f, "; first: {first}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyLoadError {}

impl PolicySet {
    /// A set without policies (for bookkeeping that needs none, such as closing an execution
    /// whose policies no longer load).
    pub fn empty() -> PolicySet {
        PolicySet {
            dir: None,
            files: Vec::new(),
            functions: Vec::new(),
            digest: digest_of(&[]),
            complete: true,
            combined: Arc::new(AST::empty()),
            incident_kinds: BTreeSet::new(),
        }
    }

    /// Loads every `*.rhai` file directly inside `dir` (subdirectories are separate sets, e.g.
    /// `policies/compat/`). Fails with every diagnostic found if any file does not load.
    pub fn load(dir: &Path) -> Result<PolicySet, PolicyLoadError> {
        let mut diagnostics = Vec::new();
        let mut sources = Vec::new();
        match std::fs::read_dir(dir) {
            Err(error) => diagnostics.push(PolicyDiagnostic::unlocated(
                "R006",
                dir.to_path_buf(),
                format!("cannot read policy directory `{}`: {error}", dir.display()),
            )),
            Ok(entries) => {
                // Every `*.rhai` entry but directories: a dangling symlink or a FIFO is an error
                // (R006), never a policy file that silently vanished.
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| {
                        !path.is_dir() && path.extension().is_some_and(|extension| extension == POLICY_EXTENSION)
                    })
                    .collect();
                paths.sort();
                for path in paths {
                    match read_policy_file(&path) {
                        Ok(text) => sources.push((path, text)),
                        Err(diagnostic) => diagnostics.push(*diagnostic),
                    }
                }
            }
        }
        let mut set = PolicySet::compile(sources, &mut diagnostics);
        set.dir = Some(dir.to_path_buf());
        set.complete = diagnostics.iter().all(|d| d.severity != Severity::Error);
        if set.complete { Ok(set) } else { Err(PolicyLoadError { diagnostics, partial: Box::new(set) }) }
    }

    /// Compiles policy sources given in memory as `(path, text)`; the file name of each path
    /// orders the set and enters the digest, as for [`PolicySet::load`].
    pub fn from_sources<P: Into<PathBuf>, T: Into<String>>(
        sources: impl IntoIterator<Item = (P, T)>,
    ) -> Result<PolicySet, PolicyLoadError> {
        let mut diagnostics = Vec::new();
        let sources = sources.into_iter().map(|(path, text)| (path.into(), text.into())).collect();
        let mut set = PolicySet::compile(sources, &mut diagnostics);
        set.complete = diagnostics.is_empty();
        if set.complete { Ok(set) } else { Err(PolicyLoadError { diagnostics, partial: Box::new(set) }) }
    }

    fn compile(mut sources: Vec<(PathBuf, String)>, diagnostics: &mut Vec<PolicyDiagnostic>) -> PolicySet {
        sources.sort_by(|(a, _), (b, _)| file_name(a).cmp(&file_name(b)).then_with(|| a.cmp(b)));
        let digest = digest_of(&sources);
        let mut files = Vec::new();
        let mut functions: Vec<PolicyFunction> = Vec::new();
        let mut defined: BTreeMap<(String, usize), usize> = BTreeMap::new();
        for (path, text) in sources {
            let source: Arc<str> = Arc::from(text);
            let index = LineIndex::new(&source);
            let ast = match compile_file(&path, &source, &index) {
                Ok(ast) => ast,
                Err(mut errors) => {
                    diagnostics.append(&mut errors);
                    continue;
                }
            };
            let file_index = files.len();
            for (_, access, name, arity, definition) in ast.shared_lib().iter_script_fn_info() {
                if access == rhai::FnAccess::Private {
                    continue;
                }
                let position = definition.body.start_position();
                let function = PolicyFunction {
                    name: name.to_owned(),
                    params: definition.params.iter().map(|param| param.to_string()).collect(),
                    file_index,
                    file: path.clone(),
                    line: position.line().map_or(0, |line| line as u32),
                    column: position.position().map_or(0, |column| column as u32),
                };
                if let Some(&first) = defined.get(&(function.name.clone(), arity)) {
                    let first: &PolicyFunction = &functions[first];
                    let offset = find_fn_definition(&source, name).unwrap_or(0);
                    let span = Span::new(offset, offset + token_len(&source, offset));
                    diagnostics.push(
                        PolicyDiagnostic::at(
                            "R007",
                            path.clone(),
                            &source,
                            &index,
                            span,
                            format!(
                                "function `{name}` with {arity} parameter(s) is also defined in another policy file"
                            ),
                            "defined again here".into(),
                        )
                        .with_help(format!(
                            "first defined in {}:{}; hooks are looked up by name and arity across the whole directory",
                            first.file.display(),
                            first.line
                        )),
                    );
                    continue;
                }
                defined.insert((function.name.clone(), arity), functions.len());
                functions.push(function);
            }
            let name = file_name(&path);
            files.push(PolicyFile { path, name, source, ast: Arc::new(ast) });
        }
        functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.arity().cmp(&b.arity())));
        calls::check_calls(&files, diagnostics);
        let combined = files.iter().fold(AST::empty(), |combined, file| combined.merge(&file.ast));
        let incident_kinds = kinds::incident_kinds(&files);
        PolicySet { dir: None, files, functions, digest, complete: true, combined: Arc::new(combined), incident_kinds }
    }

    /// The set with one more file, `source`, whose functions **replace** the set's functions of
    /// the same name and arity instead of colliding with them (R007): the mocks of a
    /// `salvage test`. Its constants shadow the set's constants of the same name. The file is
    /// checked like any policy file (only `fn` and literal `const` at the top level), its
    /// diagnostics are located in `source`, and the digest covers it.
    pub fn with_overrides(&self, path: impl Into<PathBuf>, source: &str) -> Result<PolicySet, PolicyLoadError> {
        let path = path.into();
        let source: Arc<str> = Arc::from(source);
        let index = LineIndex::new(&source);
        let ast = compile_file(&path, &source, &index)
            .map_err(|diagnostics| PolicyLoadError { diagnostics, partial: Box::new(self.clone()) })?;
        let file_index = self.files.len();
        let mut replacing = Vec::new();
        for (_, access, name, _, definition) in ast.shared_lib().iter_script_fn_info() {
            if access == rhai::FnAccess::Private {
                continue;
            }
            let position = definition.body.start_position();
            replacing.push(PolicyFunction {
                name: name.to_owned(),
                params: definition.params.iter().map(|param| param.to_string()).collect(),
                file_index,
                file: path.clone(),
                line: position.line().map_or(0, |line| line as u32),
                column: position.position().map_or(0, |column| column as u32),
            });
        }
        let mut functions: Vec<PolicyFunction> = self
            .functions
            .iter()
            .filter(|kept| !replacing.iter().any(|new| new.name == kept.name && new.arity() == kept.arity()))
            .cloned()
            .collect();
        functions.extend(replacing);
        functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.arity().cmp(&b.arity())));
        // `merge` keeps the later definition of a function with the same name and arity.
        let combined = self.combined.merge(&ast);
        let mut files = self.files.clone();
        let name = file_name(&path);
        files.push(PolicyFile { path, name, source, ast: Arc::new(ast) });
        let sources: Vec<(PathBuf, String)> = files.iter().map(|f| (f.path.clone(), f.source.to_string())).collect();
        Ok(PolicySet {
            dir: self.dir.clone(),
            digest: digest_of(&sources),
            incident_kinds: kinds::incident_kinds(&files),
            files,
            functions,
            complete: self.complete,
            combined: Arc::new(combined),
        })
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The compiled files, ordered by file name.
    pub fn files(&self) -> &[PolicyFile] {
        &self.files
    }

    /// Every public function, ordered by name then arity.
    pub fn functions(&self) -> &[PolicyFunction] {
        &self.functions
    }

    /// Functions called `name`, whatever their arity.
    pub fn functions_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a PolicyFunction> + 'a {
        self.functions.iter().filter(move |function| function.name == name)
    }

    /// The function `name` taking `arity` parameters, with the AST that defines it.
    /// The function `name` taking `arity` parameters, with the script to call it in (the whole
    /// set merged, so that it can use the helpers and constants of every file).
    pub fn function(&self, name: &str, arity: usize) -> Option<(&PolicyFunction, &Arc<AST>)> {
        let function = self.functions.iter().find(|f| f.name == name && f.arity() == arity)?;
        Some((function, &self.combined))
    }

    /// The incident kinds of the set's own (beyond the built-in ones) that playbooks may match:
    /// string literals `classify` returns and the kinds declared in `const INCIDENT_KINDS`.
    pub fn custom_incident_kinds(&self) -> impl Iterator<Item = &str> {
        self.incident_kinds
            .iter()
            .map(String::as_str)
            .filter(|kind| !crate::model::IncidentKind::parse(kind).is_known())
    }

    /// The file that defines a script function called `name` (private functions and closures
    /// included), for locating run-time errors.
    pub fn file_defining(&self, name: &str) -> Option<&Path> {
        self.files.iter().rev().find_map(|file| {
            file.ast
                .shared_lib()
                .iter_script_fn_info()
                .any(|(_, _, defined, _, _)| defined == name)
                .then_some(file.path.as_path())
        })
    }

    /// sha256 (lowercase hex) over the sources sorted by file name, each preceded by its file
    /// name and length; any change to a file's name or text changes it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// False for the partial set of a [`PolicyLoadError`].
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn digest_of(sources: &[(PathBuf, String)]) -> String {
    let mut hasher = Sha256::new();
    for (path, text) in sources {
        let name = file_name(path);
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    hex(&hasher.finalize())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn read_policy_file(path: &Path) -> Result<String, Box<PolicyDiagnostic>> {
    let unreadable = |message: String| Box::new(PolicyDiagnostic::unlocated("R006", path.to_path_buf(), message));
    // The size is checked before reading: a sparse 3 GiB file costs nothing.
    let bytes =
        crate::limits::read_regular_file(path, MAX_POLICY_FILE_BYTES as u64).map_err(|refused| match refused {
            crate::limits::ReadRefused::TooLarge { size, .. } => unreadable(format!(
                "`{}` is {size} bytes; policy files are limited to {MAX_POLICY_FILE_BYTES} bytes",
                path.display()
            )),
            other => unreadable(format!("cannot read `{}`: {other}", path.display())),
        })?;
    String::from_utf8(bytes).map_err(|error| {
        unreadable(format!(
            "`{}` is not UTF-8 (invalid byte at offset {})",
            path.display(),
            error.utf8_error().valid_up_to()
        ))
    })
}

/// Compiles one file and checks its top level; errors carry file, line, column and span.
fn compile_file(path: &Path, source: &Arc<str>, index: &LineIndex) -> Result<AST, Vec<PolicyDiagnostic>> {
    let mut ast =
        engine::engine().compile(&**source).map_err(|error| vec![parse_diagnostic(path, source, index, &error)])?;
    ast.set_source(path.display().to_string());
    let constants: Vec<String> = ast.iter_literal_variables(true, false).map(|(name, _, _)| name.to_owned()).collect();
    let mut errors = Vec::new();
    for statement in ast.statements() {
        let problem = match statement {
            Stmt::Noop(_) => None,
            Stmt::Var(definition, flags, _) if flags.contains(rhai::ASTFlags::CONSTANT) => {
                let name = definition.0.name.as_str();
                (!constants.iter().any(|constant| constant == name))
                    .then(|| format!("constant `{name}` must have a literal value"))
            }
            Stmt::Var(definition, ..) => Some(format!("top-level variable `{}`", definition.0.name)),
            Stmt::Import(..) => Some("`import` at the top level".to_owned()),
            _ => Some("a top-level statement".to_owned()),
        };
        if let Some(what) = problem {
            let position = statement.position();
            let span = span_at(source, index, position);
            errors.push(
                PolicyDiagnostic::at(
                    "R004",
                    path.to_path_buf(),
                    source,
                    index,
                    span,
                    format!("{what} is not allowed in a policy file"),
                    "only `fn` and `const` may appear here".into(),
                )
                .with_help("move it into a function, or make it a `const` with a literal value"),
            );
        }
    }
    if errors.is_empty() { Ok(ast) } else { Err(errors) }
}

fn span_at(source: &str, index: &LineIndex, position: Position) -> Span {
    match (position.line(), position.position()) {
        (Some(line), column) => {
            let start = index.offset_of(source, line, column.unwrap_or(1));
            Span::new(start, start + token_len(source, start))
        }
        _ => Span::new(0, 0),
    }
}

/// Maps a Rhai parse error to a diagnostic with the right code.
fn parse_diagnostic(path: &Path, source: &Arc<str>, index: &LineIndex, error: &ParseError) -> PolicyDiagnostic {
    let ParseError(kind, position) = error;
    let span = span_at(source, index, *position);
    let text = kind.to_string();
    let (code, message, label, help) = match kind.as_ref() {
        ParseErrorType::BadInput(lex) if lex.to_string().contains("'eval'") => (
            "R003",
            "`eval` is not allowed in policies".to_owned(),
            "`eval` is disabled".to_owned(),
            Some("write the code out instead of evaluating text"),
        ),
        ParseErrorType::Reserved(word) if word == "eval" => (
            "R003",
            "`eval` is not allowed in policies".to_owned(),
            "`eval` is disabled".to_owned(),
            Some("write the code out instead of evaluating text"),
        ),
        ParseErrorType::Reserved(word) if word == "import" => (
            "R002",
            "`import` is not allowed in policies".to_owned(),
            "`import` is disabled".to_owned(),
            Some("every .rhai file of the policy directory is loaded; define the helper in one of them"),
        ),
        ParseErrorType::VariableUndefined(name) => (
            "R005",
            format!("undefined variable `{name}`"),
            "not a parameter, `let` or `const` in scope".to_owned(),
            Some("hooks read everything from their parameters (e.g. `step`, `ctx`); file constants are `global::NAME`"),
        ),
        _ => ("R001", format!("syntax error: {text}"), text.clone(), None),
    };
    let diagnostic = PolicyDiagnostic::at(code, path.to_path_buf(), source, index, span, message, label);
    match help {
        Some(help) => diagnostic.with_help(help),
        None => diagnostic,
    }
}

/// Byte offset of `fn NAME` in a source (best effort, for labels).
fn find_fn_definition(source: &str, name: &str) -> Option<usize> {
    let needle = format!("fn {name}");
    source.match_indices(&needle).map(|(offset, _)| offset + 3).find(|&offset| {
        let after = source[offset + name.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<PolicySet, PolicyLoadError> {
        PolicySet::from_sources([("policies/hooks.rhai", text)])
    }

    fn single_error(text: &str) -> PolicyDiagnostic {
        let error = load_one(text).unwrap_err();
        assert_eq!(error.diagnostics.len(), 1, "{:#?}", error.diagnostics);
        error.diagnostics.into_iter().next().unwrap()
    }

    #[test]
    fn lists_functions_with_arity_and_file() {
        let set = PolicySet::from_sources([
            ("b.rhai", "fn approvers(step, ctx) { [\"sre\"] }\nprivate fn helper() { 1 }\n"),
            (
                "a.rhai",
                "const LIMIT = 3;\n\nfn choose_checkpoint(ctx) { () }\nfn choose_checkpoint(ctx, hint) { hint }\n",
            ),
        ])
        .unwrap();
        let listed: Vec<(&str, usize, String)> =
            set.functions().iter().map(|f| (f.name.as_str(), f.arity(), f.file.display().to_string())).collect();
        assert_eq!(
            listed,
            vec![
                ("approvers", 2, "b.rhai".to_owned()),
                ("choose_checkpoint", 1, "a.rhai".to_owned()),
                ("choose_checkpoint", 2, "a.rhai".to_owned()),
            ]
        );
        assert_eq!(set.files()[0].name, "a.rhai", "files are ordered by name");
        let (function, ast) = set.function("approvers", 2).unwrap();
        assert_eq!(function.line, 1);
        assert_eq!(ast.source(), Some("b.rhai"));
        assert!(set.function("approvers", 1).is_none());
        assert!(set.function("helper", 0).is_none(), "private functions are not hooks");
    }

    #[test]
    fn syntax_error_position_is_line_column_and_byte_span() {
        let text = "// approvals\nfn requires_approval(step, ctx) {\n    let x = ;\n}\n";
        let diagnostic = single_error(text);
        assert_eq!(diagnostic.code, "R001");
        assert_eq!((diagnostic.line, diagnostic.column), (3, 13));
        let span = diagnostic.span.unwrap();
        assert_eq!(&text[span.range()], ";");
        assert_eq!(diagnostic.file, PathBuf::from("policies/hooks.rhai"));
    }

    #[test]
    fn columns_are_characters_spans_are_bytes() {
        let text = "fn f(x) {\n    \"é\" + y\n}\n";
        let diagnostic = single_error(text);
        assert_eq!(diagnostic.code, "R005");
        assert_eq!((diagnostic.line, diagnostic.column), (2, 11));
        assert_eq!(&text[diagnostic.span.unwrap().range()], "y");
    }

    #[test]
    fn import_is_refused() {
        let diagnostic = single_error("import \"shared\" as shared;\nfn f() { 1 }\n");
        assert_eq!(diagnostic.code, "R002");
        assert_eq!((diagnostic.line, diagnostic.column), (1, 1));
        let inside = single_error("fn f() {\n  import \"x\" as x;\n  1\n}\n");
        assert_eq!((inside.code, inside.line, inside.column), ("R002", 2, 3));
    }

    #[test]
    fn eval_is_refused() {
        let diagnostic = single_error("fn f(ctx) {\n    eval(\"40 + 2\")\n}\n");
        assert_eq!((diagnostic.code, diagnostic.line, diagnostic.column), ("R003", 2, 5));
    }

    #[test]
    fn top_level_statements_are_refused() {
        let text = "const OK = 1;\nfn f() { 1 }\nprint(\"loaded\");\nlet counter = 0;\nconst LATER = f();\n";
        let error = load_one(text).unwrap_err();
        let found: Vec<(&str, u32, u32)> = error.diagnostics.iter().map(|d| (d.code, d.line, d.column)).collect();
        assert_eq!(found, vec![("R004", 3, 1), ("R004", 4, 1), ("R004", 5, 1)]);
        assert!(error.diagnostics[2].message.contains("literal"), "{}", error.diagnostics[2].message);
        assert!(!error.partial.is_complete());
    }

    #[test]
    fn duplicate_function_across_files_is_refused() {
        let error = PolicySet::from_sources([
            ("a.rhai", "fn approvers(step, ctx) { [] }\n"),
            ("b.rhai", "\nfn approvers(step, ctx) { [\"x\"] }\n"),
        ])
        .unwrap_err();
        let diagnostic = &error.diagnostics[0];
        assert_eq!((diagnostic.code, diagnostic.line, diagnostic.column), ("R007", 2, 4));
        assert_eq!(diagnostic.file, PathBuf::from("b.rhai"));
    }

    #[test]
    fn overrides_replace_functions_of_the_same_name_and_arity() {
        let set = PolicySet::from_sources([
            ("a.rhai", "const LEVEL = \"set\";\nfn pick(ctx) { helper() }\nfn helper() { global::LEVEL }\n"),
            ("b.rhai", "fn pick(ctx, hint) { hint }\n"),
        ])
        .unwrap();
        let call = |set: &PolicySet, name: &str, args: Vec<rhai::Dynamic>| {
            hooks::call(set, name, args).map(|call| (call.value.to_string(), call.function.file.clone())).unwrap()
        };
        assert_eq!(call(&set, "pick", vec![().into()]).0, "set");

        let mocked = set
            .with_overrides("mock.rhai", "const LEVEL = \"mock\";\nfn helper() { \"mocked \" + global::LEVEL }\n")
            .unwrap();
        assert_eq!(
            call(&mocked, "pick", vec![().into()]),
            ("mocked mock".to_owned(), PathBuf::from("a.rhai")),
            "an unchanged hook calls the replaced helper, which reads the shadowing constant"
        );
        let helpers: Vec<PathBuf> = mocked.functions_named("helper").map(|f| f.file.clone()).collect();
        assert_eq!(helpers, [PathBuf::from("mock.rhai")], "the replaced function is listed once, from the mock");
        assert_eq!(call(&mocked, "pick", vec![().into(), "kept".into()]).0, "kept", "other arities stay");
        assert_ne!(mocked.digest(), set.digest());
        assert_eq!(call(&set, "pick", vec![().into()]).0, "set", "the original set is unchanged");

        let bad = set.with_overrides("mock.rhai", "fn pick(ctx) { 1 }\nlet x = 1;\n").unwrap_err();
        let found: Vec<(&str, u32, u32)> = bad.diagnostics.iter().map(|d| (d.code, d.line, d.column)).collect();
        assert_eq!(found, [("R004", 2, 1)]);
    }

    const CLASSIFY_CALLING_AN_UNDEFINED_HELPER: &str = "fn classify(report, ctx) {
    if is_throttled(ctx) {
        \"rate_limited\"
    } else {
        \"tool_failure\"
    }
}
";

    #[test]
    fn a_call_to_a_function_no_file_defines_is_r008_where_the_call_is() {
        let rate_limits = format!("{}fn throttle_window(ctx) {{ 60 }}\n", "// limits\n".repeat(58));
        let error = PolicySet::from_sources([
            ("policies/classify.rhai", CLASSIFY_CALLING_AN_UNDEFINED_HELPER.to_owned()),
            ("policies/rate_limits.rhai", rate_limits),
        ])
        .unwrap_err();
        let found: Vec<(&str, PathBuf, u32, u32)> =
            error.diagnostics.iter().map(|d| (d.code, d.file.clone(), d.line, d.column)).collect();
        assert_eq!(found, [("R008", PathBuf::from("policies/classify.rhai"), 2, 8)]);
        let diagnostic = &error.diagnostics[0];
        assert_eq!(&CLASSIFY_CALLING_AN_UNDEFINED_HELPER[diagnostic.span.unwrap().range()], "is_throttled");
        assert!(diagnostic.message.contains("`is_throttled` is not defined"), "{}", diagnostic.message);
        assert!(!error.partial.is_complete());
        assert!(diagnostic::explain("R008").is_some_and(|text| text.contains("is_throttled")));
    }

    #[test]
    fn a_call_with_the_wrong_number_of_arguments_is_r008() {
        let diagnostic = single_error("fn pick(ctx) {\n    helper(ctx, 1)\n}\nprivate fn helper(x) { x }\n");
        assert_eq!((diagnostic.code, diagnostic.line, diagnostic.column), ("R008", 2, 5));
        assert!(diagnostic.message.contains("called with 2 argument(s)"), "{}", diagnostic.message);
        let method = single_error("fn pick(report) {\n    report.failedSteps.lenght()\n}\n");
        assert_eq!((method.code, method.line), ("R008", 2));
        assert!(method.message.contains("`lenght`"), "{}", method.message);
    }

    #[test]
    fn calls_to_rhai_salvage_and_any_file_of_the_set_are_fine() {
        let set = PolicySet::from_sources([
            (
                "a.rhai",
                "const TEAMS = [\"sre\"];\nfn classify(report, ctx) {\n    let n = ctx.failed_steps().len();\n    \
                 let f = |x| x + n;\n    let g = Fn(\"common\");\n    print(type_of(f.call(1)));\n    \
                 if is_def_fn(\"common\", 1) { debug(g.call(n)); }\n    for (step, i) in ctx.failed_steps() { \
                 step.to_string(); }\n    common(n).to_string().to_upper() + global::TEAMS.len()\n}\n",
            ),
            ("b.rhai", "fn approvers(step, ctx) { global::TEAMS }\nprivate fn common(x) { abs(x) + max(x, 1) }\n"),
        ]);
        let set = set.unwrap_or_else(|error| panic!("{:#?}", error.diagnostics));
        assert!(set.is_complete());
        let shipped = PolicySet::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").as_path());
        assert!(shipped.is_ok(), "{:#?}", shipped.err().map(|e| e.diagnostics));
    }

    #[test]
    fn a_run_time_error_is_located_in_the_file_of_each_call() {
        // The failing helper sits in the first file and the hook in the second: the merged
        // script carries the last file's name, which Rhai gives every call site.
        let set = PolicySet::from_sources([
            ("policies/a_helpers.rhai", "\n\nfn lookup(m) {\n    m.missing\n}\n"),
            ("policies/classify.rhai", "fn classify(report) {\n    let m = #{ a: 1 };\n    lookup(m)\n}\n"),
            ("policies/rate_limits.rhai", "fn window(ctx) {\n    60\n}\n"),
        ])
        .unwrap();
        let error = hooks::call(&set, "classify", vec![rhai::Dynamic::UNIT]).err().expect("the hook fails");
        let hooks::HookError::Failed { location, message, deadline_exceeded: false } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(location, "policies/a_helpers.rhai:4:7");
        assert_eq!(message, "Property not found: missing; in `lookup`, called at policies/classify.rhai:3:5");
        assert!(!error.to_string().contains("rate_limits"), "{error}");
    }

    #[test]
    fn digest_is_stable_and_covers_names_and_text() {
        let a = [("x/a.rhai", "fn f() { 1 }"), ("x/b.rhai", "fn g() { 2 }")];
        let digest = PolicySet::from_sources(a).unwrap().digest().to_owned();
        assert_eq!(digest.len(), 64);
        let reordered = [("y/b.rhai", "fn g() { 2 }"), ("y/a.rhai", "fn f() { 1 }")];
        assert_eq!(PolicySet::from_sources(reordered).unwrap().digest(), digest, "order and directory do not matter");
        let edited = [("x/a.rhai", "fn f() { 1 } "), ("x/b.rhai", "fn g() { 2 }")];
        assert_ne!(PolicySet::from_sources(edited).unwrap().digest(), digest);
        let renamed = [("x/a2.rhai", "fn f() { 1 }"), ("x/b.rhai", "fn g() { 2 }")];
        assert_ne!(PolicySet::from_sources(renamed).unwrap().digest(), digest);
        // Moving text between files changes the digest even though the concatenation is equal.
        let moved = [("x/a.rhai", "fn f() { 1 }fn g() { 2 }"), ("x/b.rhai", "")];
        assert_ne!(PolicySet::from_sources(moved).unwrap().digest(), digest);
    }

    #[test]
    fn load_reads_only_rhai_files_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hooks.rhai"), "fn approvers(step, ctx) { [] }\n").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not policy").unwrap();
        std::fs::create_dir(dir.path().join("compat")).unwrap();
        std::fs::write(dir.path().join("compat/other.rhai"), "this is not rhai").unwrap();
        let set = PolicySet::load(dir.path()).unwrap();
        assert_eq!(set.files().len(), 1);
        assert!(set.is_complete());
        let missing = PolicySet::load(&dir.path().join("absent")).unwrap_err();
        assert_eq!(missing.diagnostics[0].code, "R006");
        std::fs::write(dir.path().join("bad.rhai"), [0xff, 0xfe, 0x00]).unwrap();
        let bad = PolicySet::load(dir.path()).unwrap_err();
        assert_eq!(bad.diagnostics[0].code, "R006");
        assert_eq!(bad.partial.functions().len(), 1, "the good file still compiled");
    }
}
