//! The one sandboxed Rhai engine every policy, hook and guard runs in.
//!
//! Policies decide; they never act. The engine is configured once ([`engine`]) so that no code
//! path can forget a limit:
//! - no module loading: `import` is a disabled keyword and the module resolver is a
//!   [`DummyModuleResolver`] (Rhai's default resolver reads files);
//! - no `eval` (disabled keyword);
//! - strict variables: an undefined variable is a compile error, not `()` at run time;
//! - reading a map property that does not exist is an error (`ctx.enviroment` fails loudly);
//! - limits on operations, call depth, expression depth, string, array and map sizes, variables
//!   and functions ([`LIMITS`]);
//! - `print` / `debug` go to `tracing` (target `salvage::policy`), never to stdout;
//! - a wall-clock deadline per evaluation, see [`Deadline`].
//!
//! # Deadlines
//!
//! The operation limit bounds work, not time (a host function may be slow). A caller that
//! evaluates policy code sets a deadline for the duration of that evaluation:
//!
//! ```
//! use std::time::Duration;
//! use salvage::policy::engine::{self, Deadline};
//!
//! let ast = engine::engine().compile_expression("40 + 2").unwrap();
//! let value = {
//!     let _deadline = Deadline::start(Duration::from_millis(50));
//!     engine::engine().eval_ast::<i64>(&ast)
//! };
//! assert_eq!(value.unwrap(), 42);
//! ```
//!
//! The deadline is per thread (evaluation is synchronous) and nests: the guard restores the
//! previous deadline when dropped. An evaluation past its deadline fails with
//! `EvalAltResult::ErrorTerminated`, which [`is_deadline_exceeded`] recognises. Without a
//! deadline only the operation limit applies.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult};

/// The sandbox limits. Zero would mean "unlimited" to Rhai, so none is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Operations per evaluation (a runaway `loop {}` stops after this many).
    pub max_operations: u64,
    /// Nested function calls (deep recursion stops here).
    pub max_call_levels: usize,
    /// Expression nesting at global level and inside functions.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array / entries in one map built by a script.
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables in scope and functions per script.
    pub max_variables: usize,
    pub max_functions: usize,
    /// The deadline callers should use when they have no reason to choose another.
    pub default_deadline: Duration,
}

/// The limits [`engine`] is built with.
pub const LIMITS: Limits = Limits {
    max_operations: 1_000_000,
    max_call_levels: 32,
    max_expr_depth: 64,
    max_function_expr_depth: 32,
    max_string_size: 1024 * 1024,
    max_array_size: 100_000,
    max_map_size: 100_000,
    max_variables: 1_000,
    max_functions: 1_000,
    default_deadline: Duration::from_millis(50),
};

/// The value an evaluation is terminated with when its deadline passes.
pub const DEADLINE_EXCEEDED: &str = "policy evaluation deadline exceeded";

/// How many operations pass between two clock reads (reading the clock costs ~20 ns).
const OPERATIONS_PER_CLOCK_CHECK: u64 = 256;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets the deadline of the evaluations made on this thread until dropped.
#[must_use = "the deadline is lifted when the guard is dropped"]
#[derive(Debug)]
pub struct Deadline {
    previous: Option<Instant>,
}

impl Deadline {
    /// Evaluations on this thread fail once `timeout` has passed from now.
    pub fn start(timeout: Duration) -> Deadline {
        Deadline::until(Instant::now() + timeout)
    }

    /// Evaluations on this thread fail once `instant` has passed. An outer, earlier deadline
    /// stays in force.
    pub fn until(instant: Instant) -> Deadline {
        let previous = DEADLINE.with(|cell| cell.get());
        let effective = match previous {
            Some(outer) if outer < instant => outer,
            _ => instant,
        };
        DEADLINE.with(|cell| cell.set(Some(effective)));
        Deadline { previous }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        DEADLINE.with(|cell| cell.set(self.previous));
    }
}

/// Whether an evaluation error is the deadline of [`Deadline`] (possibly inside a function call).
pub fn is_deadline_exceeded(error: &EvalAltResult) -> bool {
    match error {
        EvalAltResult::ErrorTerminated(token, _) => token.clone().into_string().is_ok_and(|s| s == DEADLINE_EXCEEDED),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
            is_deadline_exceeded(inner)
        }
        _ => false,
    }
}

fn progress(operations: u64) -> Option<Dynamic> {
    if !operations.is_multiple_of(OPERATIONS_PER_CLOCK_CHECK) {
        return None;
    }
    let deadline = DEADLINE.with(|cell| cell.get())?;
    (Instant::now() >= deadline).then(|| Dynamic::from(DEADLINE_EXCEEDED.to_owned()))
}

/// Builds a new engine with the sandbox configuration. Prefer [`engine`], which builds it once.
pub fn build() -> Engine {
    let mut engine = Engine::new();
    engine.set_module_resolver(DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);
    engine.set_max_operations(LIMITS.max_operations);
    engine.set_max_call_levels(LIMITS.max_call_levels);
    engine.set_max_expr_depths(LIMITS.max_expr_depth, LIMITS.max_function_expr_depth);
    engine.set_max_string_size(LIMITS.max_string_size);
    engine.set_max_array_size(LIMITS.max_array_size);
    engine.set_max_map_size(LIMITS.max_map_size);
    engine.set_max_variables(LIMITS.max_variables);
    engine.set_max_functions(LIMITS.max_functions);
    engine.on_progress(progress);
    super::context::register(&mut engine);
    engine.on_print(|text| tracing::info!(target: "salvage::policy", "{text}"));
    engine.on_debug(|text, source, position| {
        tracing::debug!(target: "salvage::policy", source = source.unwrap_or("<policy>"), position = %position, "{text}");
    });
    engine
}

/// The shared sandboxed engine, built on first use.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_error(script: &str) -> String {
        match engine().compile(script) {
            Ok(_) => panic!("`{script}` compiled"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn eval_and_import_are_disabled_keywords() {
        assert!(compile_error("eval(\"1\")").contains("'eval' is disabled"));
        assert!(compile_error("fn f() { import \"x\" as y; 1 }").contains("'import' is a reserved keyword"));
    }

    #[test]
    fn undefined_variables_fail_at_compile_time() {
        assert!(compile_error("fn f(x) { y + 1 }").contains("Undefined variable: y"));
    }

    #[test]
    fn missing_map_properties_are_errors() {
        let error = engine().eval::<Dynamic>("let m = #{ a: 1 }; m.b").unwrap_err();
        assert!(error.to_string().contains("Property not found: b"), "{error}");
    }

    #[test]
    fn runaway_loops_stop_at_the_operation_limit() {
        let error = engine().eval::<Dynamic>("loop {}").unwrap_err();
        assert!(matches!(*error, EvalAltResult::ErrorTooManyOperations(_)), "{error}");
    }

    #[test]
    fn deep_recursion_stops() {
        let error = engine().eval::<Dynamic>("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(error.to_string().contains("Stack overflow") || error.to_string().contains("call"), "{error}");
    }

    #[test]
    fn huge_strings_stop() {
        let error = engine().eval::<Dynamic>("let s = \"xxxxxxxxxxxxxxxx\"; loop { s += s; }").unwrap_err();
        assert!(matches!(*error, EvalAltResult::ErrorDataTooLarge(..)), "{error}");
    }

    #[test]
    fn deadline_terminates_and_nests() {
        let ast = engine().compile("let n = 0; while n < 100000000 { n += 1; } n").unwrap();
        let started = Instant::now();
        let error = {
            let _outer = Deadline::start(Duration::from_millis(5));
            let _inner = Deadline::start(Duration::from_secs(60));
            engine().eval_ast::<i64>(&ast).unwrap_err()
        };
        assert!(is_deadline_exceeded(&error), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(DEADLINE.with(|cell| cell.get()).is_none(), "guards restore the previous deadline");
    }
}
