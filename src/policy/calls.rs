//! R008: calls to functions that nothing defines.
//!
//! Rhai resolves a call when it runs, so a policy calling a function no file of the set
//! defines compiles, loads and then fails closed on every incident that reaches the call. The
//! set is checked when it loads instead: every call of every file must name a function that
//! Rhai or salvage registers in the sandboxed engine, or that some file of the set defines with
//! that many parameters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use rhai::{AST, ASTNode, Expr, FnCallExpr, Position, Stmt};

use super::PolicyFile;
use super::diagnostic::PolicyDiagnostic;
use super::source::LineIndex;

/// Rhai's keyword functions, handled by the evaluator rather than registered (`call`, `curry`
/// are methods of function pointers; `eval` is disabled by the engine and refused as R003).
const KEYWORD_FUNCTIONS: [&str; 9] =
    ["print", "debug", "type_of", "Fn", "call", "curry", "is_shared", "is_def_var", "is_def_fn"];

/// Name → parameter counts of every function registered in the sandboxed engine (Rhai's
/// packages and salvage's context helpers, getters and setters included).
fn registered() -> &'static HashMap<String, BTreeSet<usize>> {
    static REGISTERED: OnceLock<HashMap<String, BTreeSet<usize>>> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let mut by_name: HashMap<String, BTreeSet<usize>> = HashMap::new();
        let functions = super::engine::engine().collect_fn_metadata(
            None,
            |info| Some((info.metadata.name.to_string(), info.metadata.num_params)),
            true,
        );
        for (name, params) in functions {
            by_name.entry(name).or_default().insert(params);
        }
        by_name
    })
}

/// Every script function (public or private) of the files, by name, with their arities.
fn script_functions(files: &[PolicyFile]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut by_name: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for file in files {
        for (_, _, name, arity, _) in file.ast.shared_lib().iter_script_fn_info() {
            by_name.entry(name.to_owned()).or_default().insert(arity);
        }
    }
    by_name
}

/// Names bound as variables anywhere in a file (parameters, `let`, `const`, loop variables):
/// a call through a variable holding a function pointer is not a call by name.
fn variable_names(ast: &AST) -> HashSet<String> {
    let mut names: HashSet<String> = HashSet::new();
    for (_, _, _, _, definition) in ast.shared_lib().iter_script_fn_info() {
        names.extend(definition.params.iter().map(|param| param.to_string()));
    }
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::Var(definition, ..))) => {
                names.insert(definition.0.name.to_string());
            }
            Some(ASTNode::Stmt(Stmt::For(header, _))) => {
                names.insert(header.0.name.to_string());
                if let Some(counter) = &header.1 {
                    names.insert(counter.name.to_string());
                }
            }
            _ => {}
        }
        true
    });
    names
}

/// A call site found in a file.
struct CallSite {
    name: String,
    /// Arguments written in the call (a method call's receiver not included).
    arguments: usize,
    method: bool,
    position: Position,
}

fn calls_of(ast: &AST) -> Vec<CallSite> {
    let mut calls = Vec::new();
    let mut visit = |call: &FnCallExpr, position: Position, method: bool| {
        if call.is_qualified() || call.is_operator_call() {
            return;
        }
        calls.push(CallSite { name: call.name.to_string(), arguments: call.args.len(), method, position });
    };
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::FnCall(call, position))) | Some(ASTNode::Expr(Expr::FnCall(call, position))) => {
                visit(call, *position, false)
            }
            Some(ASTNode::Expr(Expr::MethodCall(call, position))) => visit(call, *position, true),
            _ => {}
        }
        true
    });
    calls
}

/// R008 for every call of `files` that names no function of the engine or of the set.
pub(crate) fn check_calls(files: &[PolicyFile], diagnostics: &mut Vec<PolicyDiagnostic>) {
    let scripts = script_functions(files);
    let registered = registered();
    for file in files {
        let index = LineIndex::new(&file.source);
        let variables = variable_names(&file.ast);
        for call in calls_of(&file.ast) {
            let name = call.name.as_str();
            if KEYWORD_FUNCTIONS.contains(&name) || variables.contains(name) {
                continue;
            }
            let script_arities = scripts.get(name);
            let native_arities = registered.get(name);
            // A method call passes its receiver as the first parameter of a registered
            // function, and as `this` (not a parameter) to a script function.
            let native_params = call.arguments + usize::from(call.method);
            let defined = script_arities.is_some_and(|arities| arities.contains(&call.arguments))
                || native_arities.is_some_and(|arities| arities.contains(&native_params));
            if defined {
                continue;
            }
            let span = super::span_at(&file.source, &index, call.position);
            let (message, help) = match script_arities {
                Some(arities) => (
                    format!(
                        "`{name}` is called with {} argument(s), but the policy set defines it with {}",
                        call.arguments,
                        list(arities)
                    ),
                    "pass the arguments the function declares, or define it with this many parameters".to_owned(),
                ),
                None if native_arities.is_some() => (
                    format!(
                        "no `{name}` takes {native_params} parameter(s) (salvage and Rhai define it with {})",
                        native_arities.map(list).unwrap_or_default()
                    ),
                    "`salvage policy defs` lists every function a policy can call, with its parameters".to_owned(),
                ),
                None => (
                    format!("`{name}` is not defined in any policy file, by salvage or by Rhai"),
                    "define `fn ".to_owned()
                        + name
                        + "(…)` in one of the policy files (every `.rhai` file of the directory is loaded), or fix \
                           the name; `salvage policy defs` lists the functions salvage and Rhai provide",
                ),
            };
            diagnostics.push(
                PolicyDiagnostic::at(
                    "R008",
                    file.path.clone(),
                    &file.source,
                    &index,
                    span,
                    format!("call to an undefined function: {message}"),
                    "called here".into(),
                )
                .with_help(help),
            );
        }
    }
}

fn list(arities: &BTreeSet<usize>) -> String {
    let numbers: Vec<String> = arities.iter().map(|n| format!("{n} parameter(s)")).collect();
    numbers.join(" or ")
}
