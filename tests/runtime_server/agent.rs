//! The scripted agent: the reference `Agent`'s run loop, tool gate and runtime actions (spec
//! §4.1–4.4), driven by a deterministic "model" that reads the task from the user message.
//!
//! The model: a user message that is (or parses as) a JSON object with a `task` the server
//! knows asks that task's tool with the other fields as arguments (`{"task": "send_invoice",
//! "invoiceId": "INV-1", "amount": 120}` → `send_invoice({"invoiceId": "INV-1", "amount":
//! 120})`); once the last message is the tool's result it answers a final text. Anything else
//! is answered with text at once. Like the reference's models it decides from the run's
//! messages alone, so a run resumed from a checkpoint taken before the tool's result was
//! appended asks for the tool again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};

use super::run::{Run, iso, lineage, now_ms, status, summarize, utc_string};
use super::store::{AgentError, FileStore, StoreGuard};

/// Tokens and cost recorded per model call (the recorded runs' fake model).
const PROMPT_TOKENS: i64 = 42;
const COMPLETION_TOKENS: i64 = 17;
const MODEL_CALL_COST: f64 = 0.00031;
/// The tool-confidence score the reference's default scorer gives a call with every required
/// argument (as recorded).
const FULL_CONFIDENCE: f64 = 0.85;

/// What a task's tool does when the agent calls it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPolicy {
    /// Tool metadata `executionPolicy: 'require_approval'`: the run stops `waiting_for_approval`
    /// with `pendingApproval` until a resume with `approved: true`.
    pub require_approval: bool,
    /// The tool throws on its first N executions for each business key (across runs); each
    /// failed execution writes nothing.
    pub fail_first: u32,
    /// `agent.run(input, {pauseOn: ['before_tool']})`: a run created for this task pauses with
    /// stage `before_tool` before the tool call reaches the gate (the pause config is not
    /// persisted, so resuming it proceeds).
    pub pause_before_tool: bool,
}

impl ToolPolicy {
    /// Plain success: the tool writes and the run completes.
    pub fn succeed() -> ToolPolicy {
        ToolPolicy { require_approval: false, fail_first: 0, pause_before_tool: false }
    }

    pub fn require_approval() -> ToolPolicy {
        ToolPolicy { require_approval: true, ..ToolPolicy::succeed() }
    }

    pub fn fail_first(executions: u32) -> ToolPolicy {
        ToolPolicy { fail_first: executions, ..ToolPolicy::succeed() }
    }

    pub fn pause_before_tool() -> ToolPolicy {
        ToolPolicy { pause_before_tool: true, ..ToolPolicy::succeed() }
    }

    /// Adds failures to another policy (an approved tool that then fails, ...).
    pub fn and_fail_first(self, executions: u32) -> ToolPolicy {
        ToolPolicy { fail_first: executions, ..self }
    }
}

/// One task the model knows: the tool it calls and how that tool behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The tool's name (a tool belongs to one task; give tasks distinct tool names).
    pub tool: String,
    /// The argument that names the business object written (the external write's key).
    pub key_field: String,
    pub policy: ToolPolicy,
    /// The inner error of a failing execution: `{name, message}` of the failed tool step; the
    /// run's error is `ToolExecutionError: Tool "<tool>" failed: <message>`.
    pub failure_name: String,
    pub failure_message: String,
}

impl TaskSpec {
    pub fn new(tool: &str, policy: ToolPolicy) -> TaskSpec {
        TaskSpec {
            tool: tool.to_owned(),
            key_field: "invoiceId".to_owned(),
            policy,
            failure_name: "HttpError".to_owned(),
            failure_message: "HTTP 503 Service Unavailable from billing API".to_owned(),
        }
    }

    pub fn key_field(mut self, field: &str) -> TaskSpec {
        self.key_field = field.to_owned();
        self
    }
}

/// One execution of a tool's side effect that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalWrite {
    /// The business key (the value of the task's `key_field`, e.g. the invoice id).
    pub key: String,
    pub run_id: String,
    pub tool: String,
    pub arguments: Value,
    pub at: SystemTime,
}

/// One execution of a tool, failed or not.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolAttempt {
    pub key: String,
    pub run_id: String,
    pub tool: String,
    pub succeeded: bool,
    pub at: SystemTime,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub writes: Vec<ExternalWrite>,
    pub attempts: Vec<ToolAttempt>,
}

/// The agent's configuration and its world: the run store, the external system's ledger and
/// the approval inbox.
pub struct Agent {
    pub description: String,
    pub model_name: String,
    pub tasks: BTreeMap<String, TaskSpec>,
    /// The retry manager's retries (attempts = retries + 1); the recorded runs used 0.
    pub tool_retries: u32,
    /// How long each tool execution takes before its effect happens.
    pub tool_delay: Duration,
    /// Whether branch/replay honour the caller's `metadata`.
    pub keep_metadata: bool,
    pub store: FileStore,
    pub ledger: Mutex<Ledger>,
    /// `ApprovalInbox`: a map keyed by run id, in insertion order; never resolved (the reference
    /// only calls `add`).
    pub inbox: Mutex<Vec<(String, Value)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// JavaScript truthiness.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `String(value)` for an id a caller sent (null and absent are handled before).
fn js_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(_) => "[object Object]".to_owned(),
        Value::Array(items) => items.iter().map(js_string).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// An options object's key: `None` when absent (JavaScript `undefined`: defaults apply).
fn option<'v>(options: &'v Value, key: &str) -> Option<&'v Value> {
    options.as_object().and_then(|map| map.get(key))
}

/// `{...value}` of a caller's metadata: only an object spreads.
fn spread(value: Option<&Value>) -> Map<String, Value> {
    value.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// `config.pauseOn`: a stage, a list of stages, or a map stage → `{reason}`.
fn pause_config(config: &Value) -> BTreeMap<String, Option<String>> {
    let mut stages = BTreeMap::new();
    match option(config, "pauseOn") {
        Some(Value::String(stage)) => {
            stages.insert(stage.clone(), None);
        }
        Some(Value::Array(items)) => {
            for stage in items.iter().filter_map(Value::as_str) {
                stages.insert(stage.to_owned(), None);
            }
        }
        Some(Value::Object(map)) => {
            for (stage, setting) in map.iter().filter(|(_, v)| truthy(v)) {
                let reason = setting.get("reason").and_then(Value::as_str).map(str::to_owned);
                stages.insert(stage.clone(), reason);
            }
        }
        _ => {}
    }
    stages
}

enum Turn {
    Answer(String),
    Call(Value),
}

/// One execution in progress: the run in memory, saved on every event and checkpoint.
struct Exec<'a> {
    agent: &'a Agent,
    run: Run,
    pause_on: BTreeMap<String, Option<String>>,
    /// Held during a transition's load-decide-save (see `FileStore`).
    guard: Option<StoreGuard<'a>>,
}

impl Exec<'_> {
    fn save(&mut self) -> Result<(), AgentError> {
        match &self.guard {
            Some(guard) => self.agent.store.save_locked(guard, &self.run),
            None => self.agent.store.save(&self.run),
        }
    }

    fn emit(&mut self, kind: &str, payload: Value) -> Result<(), AgentError> {
        self.run.add_event(kind, payload);
        self.save()
    }

    fn checkpoint(&mut self, label: &str, payload: Value) -> Result<(), AgentError> {
        self.run.add_checkpoint(label, payload);
        self.save()
    }

    /// The transition is decided and recorded: other requests may read the run again.
    fn release(&mut self) {
        self.guard = None;
    }

    /// `_failRun`: error recorded, status failed, `run_failed` event and checkpoint; the error
    /// is what the caller re-throws.
    fn fail(&mut self, error: AgentError) -> AgentError {
        self.run.errors.push(json!({"name": error.name, "message": error.message}));
        self.run.set_status(status::FAILED);
        let payload = json!({"name": error.name, "message": error.message});
        if let Err(save) =
            self.emit("run_failed", payload.clone()).and_then(|()| self.checkpoint("run_failed", payload))
        {
            return save;
        }
        error
    }

    /// `_pauseRun`.
    fn pause(&mut self, pending: Value) -> Result<(), AgentError> {
        self.run.pending_pause = pending.clone();
        self.run.set_status(status::PAUSED);
        self.emit("run_paused", pending.clone())?;
        self.checkpoint("run_paused", pending)
    }

    /// A `pauseOn` stage: pauses and says so when the run's config asks for it.
    fn maybe_pause(&mut self, stage: &str, payload: Value) -> Result<bool, AgentError> {
        let Some(reason) = self.pause_on.get(stage) else { return Ok(false) };
        let reason = reason.clone().unwrap_or_else(|| format!("Paused at {stage}."));
        self.pause(json!({"reason": reason, "stage": stage, "payload": payload}))?;
        Ok(true)
    }

    /// The agent loop: model turns until a final answer, a pause, a gate or a failure.
    fn agent_loop(&mut self) -> Result<(), AgentError> {
        // The scripted model needs two turns; the bound only stops a script bug from spinning.
        for _ in 0..16 {
            let message_count = self.run.messages.len();
            if self.maybe_pause("before_model", json!({"messageCount": message_count}))? {
                return Ok(());
            }
            self.emit("model_request", json!({"messageCount": message_count, "toolCount": self.agent.tool_count()}))?;
            let step = self.run.add_step("model", json!({"messageCount": message_count}));
            let started = Instant::now();
            let turn = self.agent.model_turn(&self.run.messages);
            let (message, tool_calls) = match &turn {
                Turn::Answer(text) => (json!(text), json!([])),
                Turn::Call(call) => (Value::Null, json!([call])),
            };
            self.emit("model_response", json!({"hasToolCalls": matches!(turn, Turn::Call(_)), "message": message}))?;
            self.run.update_step(
                &step,
                json!({"status": "completed", "output": {"message": message, "toolCalls": tool_calls}}),
            );
            self.run.record_usage(PROMPT_TOKENS, COMPLETION_TOKENS, MODEL_CALL_COST);
            self.run.record_timing("modelMs", started.elapsed().as_millis() as i64);
            self.checkpoint("model_response", json!({"hasToolCalls": matches!(turn, Turn::Call(_))}))?;
            if self.maybe_pause("after_model", json!({"message": message, "toolCalls": tool_calls}))? {
                return Ok(());
            }
            let call = match turn {
                Turn::Answer(text) => return self.complete(text),
                Turn::Call(call) => call,
            };
            if self.maybe_pause("before_tool", json!({"toolCall": call}))? {
                return Ok(());
            }
            if !self.gate(&call)? {
                return Ok(());
            }
            let result = self.execute_tool(&call)?;
            self.append_tool_result(&call, &result);
            if self.maybe_pause("after_tool", json!({"toolCall": call, "toolResult": result}))? {
                return Ok(());
            }
        }
        Err(self.fail(AgentError::new("Error", "The scripted model did not finish.")))
    }

    /// Success: the assessment, the output, `run_completed`.
    fn complete(&mut self, output: String) -> Result<(), AgentError> {
        let state = &mut self.run.state;
        state.entry("evidenceGraph").or_insert_with(|| json!({"nodes": [], "edges": []}));
        state.entry("toolConfidence").or_insert_with(|| json!([]));
        let scores: Vec<f64> = state["toolConfidence"]
            .as_array()
            .map(|items| items.iter().filter_map(|c| c.get("score").and_then(Value::as_f64)).collect())
            .unwrap_or_default();
        let evidence = state["evidenceGraph"]["nodes"].as_array().map_or(0, Vec::len);
        let average = if scores.is_empty() { 1.0 } else { scores.iter().sum::<f64>() / scores.len() as f64 };
        // As recorded: an answer backed by no evidence is 0.65 confident; otherwise the tools'.
        let confidence = if evidence == 0 { 0.65 } else { average };
        let round = |x: f64| (x * 100.0).round() / 100.0;
        state.insert(
            "assessment".into(),
            json!({
                "uncertainty": round(1.0 - confidence),
                "confidence": confidence,
                "evidenceConflicts": 0,
                "averageToolConfidence": super::run::js_number(average),
                "verification": null,
            }),
        );
        self.run.output = json!(output);
        self.run.set_status(status::COMPLETED);
        self.emit("run_completed", json!({"output": output}))?;
        self.checkpoint("run_completed", json!({"output": output}))
    }

    /// The tool gate: request, confidence, policy. `false` when the run now waits for approval.
    fn gate(&mut self, call: &Value) -> Result<bool, AgentError> {
        let name = call["name"].as_str().unwrap_or_default().to_owned();
        let arguments = call["arguments"].clone();
        let Some(spec) = self.agent.tool(&name).cloned() else {
            return Err(self.fail(AgentError::new("ToolNotFoundError", format!("Tool \"{name}\" not found."))));
        };
        let request = json!({
            "runId": self.run.id,
            "toolName": name,
            "toolCall": call,
            "arguments": arguments,
            "metadata": tool_metadata(&spec),
        });
        self.run.tool_calls.push(request.clone());
        self.emit("tool_requested", request.clone())?;
        let provided: Vec<&str> =
            [spec.key_field.as_str()].into_iter().filter(|field| arguments.get(*field).is_some()).collect();
        let complete = provided.len() == 1;
        let confidence = json!({
            "toolName": name,
            "score": if complete { FULL_CONFIDENCE } else { 0.35 },
            "completeness": if complete { 1 } else { 0 },
            "requiredArguments": [spec.key_field],
            "providedRequiredArguments": provided,
        });
        self.run.push_state("toolConfidence", confidence.clone());
        self.emit("tool_confidence_scored", confidence)?;
        let decision = if spec.policy.require_approval {
            json!({"action": "require_approval", "reason": "Tool requires explicit approval.", "source": "metadata"})
        } else {
            json!({"action": "allow", "reason": null, "source": "default"})
        };
        let evaluated = json!({"toolName": name, "stage": "evaluate", "decision": decision});
        self.run.push_state("policyDecisions", evaluated.clone());
        self.emit("policy_decision", evaluated)?;
        if spec.policy.require_approval {
            let mut pending = request;
            pending["reason"] = json!("Tool requires explicit approval.");
            self.run.pending_approval = pending.clone();
            self.run.set_status(status::WAITING);
            self.agent.inbox_add(&self.run.id, pending.clone());
            self.emit("approval_requested", pending)?;
            self.checkpoint("waiting_for_approval", json!({"toolName": name}))?;
            return Ok(false);
        }
        let before = json!({"toolName": name, "stage": "before_execute", "decision": {"action": "allow"}});
        self.run.push_state("policyDecisions", before.clone());
        self.emit("policy_decision", before)?;
        Ok(true)
    }

    /// Runs the tool with the retry manager; a last failure fails the run.
    fn execute_tool(&mut self, call: &Value) -> Result<Value, AgentError> {
        let name = call["name"].as_str().unwrap_or_default().to_owned();
        let arguments = call["arguments"].clone();
        let Some(spec) = self.agent.tool(&name).cloned() else {
            return Err(self.fail(AgentError::new("ToolNotFoundError", format!("Tool \"{name}\" not found."))));
        };
        for attempt in 0..=self.agent.tool_retries {
            let step = self.run.add_step("tool", json!({"toolName": name, "arguments": arguments}));
            self.emit("tool_started", json!({"toolName": name, "arguments": arguments}))?;
            let started = Instant::now();
            match self.agent.perform_tool(&spec, &self.run.id, &arguments) {
                Ok(result) => {
                    self.run.update_step(&step, json!({"status": "completed", "output": result}));
                    self.emit("tool_completed", json!({"toolName": name, "result": result}))?;
                    self.run.record_timing("toolMs", started.elapsed().as_millis() as i64);
                    self.checkpoint("tool_completed", json!({"toolName": name}))?;
                    return Ok(result);
                }
                Err(inner) => {
                    self.run.update_step(
                        &step,
                        json!({"status": "failed", "error": {"name": inner.name, "message": inner.message}}),
                    );
                    self.emit("tool_failed", json!({"toolName": name, "message": inner.message}))?;
                    if attempt == self.agent.tool_retries {
                        let error =
                            AgentError::new("ToolExecutionError", format!("Tool \"{name}\" failed: {}", inner.message));
                        return Err(self.fail(error));
                    }
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The assistant's function call and the function's result become messages; the result is
    /// a tool result and an evidence node (no event: the next one saves them).
    fn append_tool_result(&mut self, call: &Value, result: &Value) {
        let name = call["name"].clone();
        let arguments = serde_json::to_string(&call["arguments"]).unwrap_or_default();
        self.run.messages.push(json!({
            "role": "assistant", "content": "", "function_call": {"name": name, "arguments": arguments},
        }));
        self.run.messages.push(json!({
            "role": "function", "name": name, "content": serde_json::to_string(result).unwrap_or_default(),
        }));
        self.run.tool_results.push(json!({"toolName": name, "result": result}));
        let node_id = format!("{}:evidence:tool:{}", self.run.id, self.run.tool_results.len());
        let graph = self.run.state.entry("evidenceGraph").or_insert_with(|| json!({"nodes": [], "edges": []}));
        if let Some(nodes) = graph.get_mut("nodes").and_then(Value::as_array_mut) {
            nodes.push(json!({"id": node_id, "type": "tool_result", "label": name, "result": result}));
        }
        self.run.touch();
    }
}

/// The tool's metadata as the reference's tool registry normalises it.
fn tool_metadata(spec: &TaskSpec) -> Value {
    json!({
        "examples": [],
        "tags": ["billing"],
        "version": "1.0.0",
        "sideEffectLevel": "external_write",
        "timeout": null,
        "authRequirements": [],
        "idempotencyHint": "non_idempotent",
        "costHint": "unknown",
        "retryabilityHint": "unknown",
        "executionPolicy": if spec.policy.require_approval { "require_approval" } else { "auto" },
        "verificationPolicy": "never",
    })
}

/// The value of a run's user message as a task object, if it is one.
fn task_input(content: &Value) -> Option<Map<String, Value>> {
    match content {
        Value::Object(map) => Some(map.clone()),
        Value::String(text) => serde_json::from_str::<Value>(text).ok().and_then(|v| v.as_object().cloned()),
        _ => None,
    }
}

fn display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Agent {
    fn tool(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.values().find(|spec| spec.tool == name)
    }

    fn tool_count(&self) -> usize {
        let mut names: Vec<&str> = self.tasks.values().map(|spec| spec.tool.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    fn inbox_add(&self, run_id: &str, request: Value) {
        let mut inbox = lock(&self.inbox);
        match inbox.iter_mut().find(|(id, _)| id == run_id) {
            Some(entry) => entry.1 = request,
            None => inbox.push((run_id.to_owned(), request)),
        }
    }

    pub fn approvals(&self) -> Vec<Value> {
        lock(&self.inbox).iter().map(|(_, request)| request.clone()).collect()
    }

    /// The scripted model's next turn, from the messages alone.
    fn model_turn(&self, messages: &[Value]) -> Turn {
        let content =
            messages.iter().rev().find(|m| m["role"] == "user").map(|m| m["content"].clone()).unwrap_or(Value::Null);
        let task = task_input(&content);
        let spec = task
            .as_ref()
            .and_then(|t| t.get("task"))
            .and_then(Value::as_str)
            .and_then(|name| self.tasks.get(name).map(|spec| (name, spec)));
        let (Some(task), Some((task_name, spec))) = (task.clone(), spec) else {
            return Turn::Answer(format!("{}: {}", self.model_name, display(&content)));
        };
        let key = task.get(&spec.key_field).map(display).unwrap_or_default();
        if messages.last().is_some_and(|m| m["role"] == "function") {
            return Turn::Answer(format!("{}: completed {task_name} for {key} using {}", self.model_name, spec.tool));
        }
        let calls = messages.iter().filter(|m| m.get("function_call").is_some()).count();
        let mut arguments = task;
        // `shift_remove` keeps the caller's argument order (`remove` would swap the last key in).
        arguments.shift_remove("task");
        Turn::Call(json!({
            "id": format!("call_{}_{}", self.model_name, calls + 1),
            "name": spec.tool,
            "arguments": arguments,
        }))
    }

    /// The tool itself: after its delay it fails (its first N executions per key) or writes.
    fn perform_tool(&self, spec: &TaskSpec, run_id: &str, arguments: &Value) -> Result<Value, AgentError> {
        if !self.tool_delay.is_zero() {
            std::thread::sleep(self.tool_delay);
        }
        let key = arguments.get(&spec.key_field).map(display).unwrap_or_default();
        let mut ledger = lock(&self.ledger);
        let executions = ledger.attempts.iter().filter(|a| a.key == key && a.tool == spec.tool).count() as u32;
        let succeeded = executions >= spec.policy.fail_first;
        let at = SystemTime::now();
        ledger.attempts.push(ToolAttempt {
            key: key.clone(),
            run_id: run_id.to_owned(),
            tool: spec.tool.clone(),
            succeeded,
            at,
        });
        if !succeeded {
            return Err(AgentError::new(&spec.failure_name, spec.failure_message.clone()));
        }
        ledger.writes.push(ExternalWrite {
            key: key.clone(),
            run_id: run_id.to_owned(),
            tool: spec.tool.clone(),
            arguments: arguments.clone(),
            at,
        });
        let mut result = Map::new();
        result.insert(spec.key_field.clone(), json!(key));
        result.insert("status".into(), json!("sent"));
        result.insert("confirmationId".into(), json!(format!("CONF-{}", ledger.writes.len())));
        Ok(Value::Object(result))
    }

    fn exec<'a>(&'a self, run: Run, config: &Value, guard: Option<StoreGuard<'a>>) -> Exec<'a> {
        Exec { agent: self, run, pause_on: pause_config(config), guard }
    }

    fn load(&self, run_id: &str) -> Result<Run, AgentError> {
        self.store.get(run_id)?.ok_or_else(|| AgentError::run_not_found(run_id))
    }

    /// `agent.run(input, config)` with the run id chosen by the caller (`config.runId`, else a
    /// new UUID). The run is returned when it stops; a failure is recorded on it and returned
    /// as the error (the reference re-throws).
    pub fn run(&self, run_id: &str, input: Value, config: &Value) -> Result<Run, AgentError> {
        let mut metadata = Map::new();
        metadata.insert("description".into(), json!(self.description));
        let mut config = config.clone();
        if option(&config, "pauseOn").is_none()
            && self.task_of(&input).is_some_and(|spec| spec.policy.pause_before_tool)
        {
            // The service passes the task's pause as the run's config.
            if let Value::Object(map) = &mut config {
                map.insert("pauseOn".into(), json!(["before_tool"]));
            } else {
                config = json!({"pauseOn": ["before_tool"]});
            }
        }
        let mut exec = self.exec(Run::new(run_id.to_owned(), input.clone(), metadata), &config, None);
        exec.run.set_status(status::RUNNING);
        let clock = utc_string(now_ms());
        let system = if self.description.is_empty() {
            format!("Current date and time is: {clock}")
        } else {
            format!("{}\nCurrent date and time is: {clock}", self.description)
        };
        exec.run.messages.push(json!({"role": "system", "content": system}));
        exec.run.messages.push(json!({"role": "user", "content": input}));
        exec.emit("run_started", json!({"input": input}))?;
        exec.checkpoint("run_started", json!({"input": input}))?;
        if !exec.maybe_pause("after_prompt_build", json!({"input": input}))? {
            exec.agent_loop()?;
        }
        Ok(exec.run)
    }

    fn task_of(&self, input: &Value) -> Option<&TaskSpec> {
        let task = task_input(input)?;
        self.tasks.get(task.get("task")?.as_str()?)
    }

    /// `agent.resumeRun(runId, config)`, in the reference's decision order.
    pub fn resume(&self, run_id: &str, config: &Value) -> Result<Run, AgentError> {
        let guard = self.store.lock();
        let run = self.load(run_id)?;
        let mut exec = self.exec(run, config, Some(guard));
        if exec.run.status == status::PAUSED && truthy(&exec.run.pending_pause) {
            let pause = std::mem::take(&mut exec.run.pending_pause);
            let reason = pause.get("reason").cloned().unwrap_or(Value::Null);
            let stage = pause.get("stage").cloned();
            exec.run.set_status(status::RUNNING);
            exec.emit("run_resumed", json!({"reason": reason, "stage": stage.clone().unwrap_or(Value::Null)}))?;
            let mut payload = json!({"reason": reason});
            if let Some(stage) = stage {
                payload["stage"] = stage;
            }
            exec.checkpoint("run_resumed", payload)?;
            exec.release();
            exec.agent_loop()?;
            return Ok(exec.run);
        }
        if exec.run.status == status::CANCELLED {
            return Err(AgentError::new("RunCancelledError", format!("Run \"{run_id}\" has been cancelled.")));
        }
        if exec.run.status != status::WAITING || !truthy(&exec.run.pending_approval) {
            return Ok(exec.run);
        }
        let request = exec.run.pending_approval.clone();
        let approved = option(config, "approved") == Some(&Value::Bool(true));
        let reason = option(config, "reason").filter(|r| truthy(r)).cloned().unwrap_or(Value::Null);
        exec.run.set_status(status::RUNNING);
        exec.emit("approval_resolved", json!({"request": request, "approved": approved, "reason": reason}))?;
        exec.checkpoint("approval_resolved", json!({"approved": approved, "reason": reason}))?;
        exec.release();
        if !approved {
            // The default approval handler: `{approved: false, reason: 'No approval handler
            // configured.'}` → ToolPolicyError.
            return Err(exec.fail(AgentError::new("ToolPolicyError", "No approval handler configured.")));
        }
        let call = request
            .get("toolCall")
            .cloned()
            .unwrap_or_else(|| json!({"name": request.get("toolName"), "arguments": request.get("arguments")}));
        let tool_name = request.get("toolName").cloned().unwrap_or(Value::Null);
        let result = exec.execute_tool(&call)?;
        exec.append_tool_result(&call, &result);
        exec.run.pending_approval = Value::Null;
        exec.save()?;
        exec.checkpoint("tool_approved_and_resumed", json!({"toolName": tool_name}))?;
        exec.agent_loop()?;
        Ok(exec.run)
    }

    /// `agent.cancelRun(runId, {reason = 'Cancelled manually.', payload = {}})`.
    pub fn cancel(&self, run_id: &str, options: &Value) -> Result<Run, AgentError> {
        let guard = self.store.lock();
        let run = self.load(run_id)?;
        if matches!(run.status.as_str(), status::COMPLETED | status::FAILED | status::CANCELLED) {
            return Ok(run);
        }
        let mut exec = self.exec(run, &Value::Null, Some(guard));
        let reason = option(options, "reason").cloned().unwrap_or_else(|| json!("Cancelled manually."));
        let mut payload = Map::new();
        payload.insert("reason".into(), reason);
        payload.extend(spread(option(options, "payload")));
        exec.run.pending_pause = Value::Null;
        exec.run.pending_approval = Value::Null;
        exec.run.set_status(status::CANCELLED);
        exec.emit("run_cancelled", Value::Object(payload.clone()))?;
        exec.checkpoint("run_cancelled", Value::Object(payload))?;
        Ok(exec.run)
    }

    /// `agent.pauseRun(runId, {reason = 'Paused manually.', stage = 'manual', payload = {}})`.
    pub fn pause(&self, run_id: &str, options: &Value) -> Result<Run, AgentError> {
        let guard = self.store.lock();
        let run = self.load(run_id)?;
        if matches!(run.status.as_str(), status::COMPLETED | status::FAILED) {
            return Err(AgentError::new(
                "RunPausedError",
                format!("Run \"{run_id}\" cannot be paused from status \"{}\".", run.status),
            ));
        }
        let mut exec = self.exec(run, &Value::Null, Some(guard));
        let pending = json!({
            "reason": option(options, "reason").cloned().unwrap_or_else(|| json!("Paused manually.")),
            "stage": option(options, "stage").cloned().unwrap_or_else(|| json!("manual")),
            "payload": option(options, "payload").cloned().unwrap_or_else(|| json!({})),
        });
        exec.pause(pending)?;
        Ok(exec.run)
    }

    /// `Run.branchFromCheckpoint`: a new paused run seeded from a checkpoint's snapshot.
    fn branch_from_checkpoint(
        &self,
        source: &Run,
        checkpoint_id: Option<&str>,
        id: String,
        input: Value,
        mut metadata: Map<String, Value>,
    ) -> Result<Run, AgentError> {
        let checkpoint = source.checkpoint(checkpoint_id).cloned().ok_or_else(|| match checkpoint_id {
            Some(wanted) => {
                AgentError::new("Error", format!("Checkpoint \"{wanted}\" not found on run \"{}\".", source.id))
            }
            None => AgentError::new("Error", format!("Run \"{}\" has no checkpoints to branch from.", source.id)),
        })?;
        let checkpoint_id = checkpoint.get("id").map(display).unwrap_or_default();
        let label = checkpoint.get("label").map(display).unwrap_or_default();
        // A checkpoint without a snapshot silently branches from the run's current state.
        let snapshot =
            checkpoint.get("snapshot").filter(|s| s.is_object()).cloned().unwrap_or_else(|| source.snapshot());
        let parent = source.lineage().get("parentRunId").and_then(Value::as_str).map(str::to_owned);
        metadata.insert(
            "lineage".into(),
            lineage(&source.root_run_id(), parent.as_deref(), Some(&source.id), Some(&checkpoint_id)),
        );
        let mut run = Run::new(id, input, metadata);
        let array = |key: &str| snapshot.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        run.state = snapshot.get("state").and_then(Value::as_object).cloned().unwrap_or_default();
        run.messages = array("messages");
        run.steps = array("steps");
        run.tool_calls = array("toolCalls");
        run.tool_results = array("toolResults");
        run.metrics = super::run::normalize_metrics(snapshot.get("metrics").cloned());
        run.pending_approval = Value::Null;
        run.pending_pause = json!({
            "reason": format!("Branched from checkpoint \"{label}\"."),
            "stage": "branch",
            "sourceRunId": source.id,
            "sourceCheckpointId": checkpoint_id,
        });
        run.set_status(status::PAUSED);
        Ok(run)
    }

    /// The caller's metadata for a branch or replay (none when the server ignores it).
    fn caller_metadata(&self, options: &Value) -> Map<String, Value> {
        if self.keep_metadata { spread(option(options, "metadata")) } else { Map::new() }
    }

    /// `agent.branchRun(runId, {checkpointId, input, metadata})`: a new UUID chosen here.
    pub fn branch(&self, run_id: &str, options: &Value) -> Result<Run, AgentError> {
        let source = self.load(run_id)?;
        let checkpoint_id = match option(options, "checkpointId") {
            None | Some(Value::Null) => None,
            Some(value) => Some(js_string(value)).filter(|id| !id.is_empty()),
        };
        let input = option(options, "input").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| source.input.clone());
        let mut metadata = Map::new();
        metadata.insert("description".into(), json!(self.description));
        metadata.extend(self.caller_metadata(options));
        let id = uuid::Uuid::new_v4().to_string();
        let branch = self.branch_from_checkpoint(&source, checkpoint_id.as_deref(), id, input, metadata)?;
        let mut exec = self.exec(branch, &Value::Null, None);
        let payload = json!({
            "sourceRunId": source.id,
            "sourceCheckpointId": exec.run.lineage().get("branchCheckpointId").cloned().unwrap_or(Value::Null),
        });
        exec.emit("run_branched", payload.clone())?;
        exec.checkpoint("run_branched", payload)?;
        exec.save()?;
        Ok(exec.run)
    }

    /// `agent.replayRun(runId, {checkpointId, metadata})`: a partial replay (paused, stage
    /// `replay`) with a checkpoint, else a frozen copy of the source's outcome.
    pub fn replay(&self, run_id: &str, options: &Value) -> Result<Run, AgentError> {
        let source = self.load(run_id)?;
        let caller = self.caller_metadata(options);
        let now = now_ms();
        let checkpoint_id = option(options, "checkpointId").filter(|v| truthy(v)).map(js_string);
        let (run, mode) = match checkpoint_id {
            Some(checkpoint_id) => {
                let mut metadata = Map::new();
                metadata.insert("description".into(), json!(self.description));
                metadata.extend(caller.clone());
                let id = format!("{}:partial-replay:{now}", source.id);
                let run =
                    self.branch_from_checkpoint(&source, Some(&checkpoint_id), id, source.input.clone(), metadata)?;
                (run, "partial_frozen_trace")
            }
            None => {
                let mut copy = Run::from_json(source.to_json()).map_err(|problem| AgentError::new("Error", problem))?;
                let fresh = Run::new(format!("{}:replay:{now}", source.id), Value::Null, Map::new());
                copy.id = fresh.id;
                copy.timestamps = fresh.timestamps;
                copy.events.clear();
                copy.checkpoints.clear();
                copy.pending_pause = Value::Null;
                copy.pending_approval = Value::Null;
                (copy, "frozen_trace")
            }
        };
        let partial = mode == "partial_frozen_trace";
        let source_lineage = source.lineage();
        let checkpoint =
            if partial { run.lineage().get("branchCheckpointId").cloned().unwrap_or(Value::Null) } else { Value::Null };
        let lineage_value = if partial {
            lineage(&source.root_run_id(), None, Some(&source.id), checkpoint.as_str())
        } else {
            let text = |key: &str| source_lineage.get(key).and_then(Value::as_str).map(str::to_owned);
            lineage(
                &source.root_run_id(),
                None,
                text("branchOriginRunId").as_deref(),
                text("branchCheckpointId").as_deref(),
            )
        };
        let mut exec = self.exec(run, &Value::Null, None);
        // The replay is created at the instant its id and `replayedAt` name.
        exec.run.timestamps.insert("createdAt".into(), json!(iso(now)));
        // `{...metadata, ...callerMetadata, replay, lineage}`: an existing key keeps its place.
        exec.run.metadata.extend(caller);
        exec.run.metadata.insert(
            "replay".into(),
            json!({"mode": mode, "sourceRunId": source.id, "sourceCheckpointId": checkpoint, "replayedAt": iso(now)}),
        );
        exec.run.metadata.insert("lineage".into(), lineage_value);
        exec.run.pending_pause = Value::Null;
        exec.run.set_status(status::RUNNING);
        let started = json!({"sourceRunId": source.id, "sourceCheckpointId": checkpoint, "mode": mode});
        exec.emit("replay_started", started.clone())?;
        exec.checkpoint("replay_started", started)?;
        let final_status = if partial {
            exec.run.pending_pause = json!({
                "reason": format!("Frozen replay prepared from checkpoint \"{}\".", display(&checkpoint)),
                "stage": "replay",
                "sourceRunId": source.id,
                "sourceCheckpointId": checkpoint,
            });
            status::PAUSED.to_owned()
        } else {
            source.status.clone()
        };
        exec.run.set_status(&final_status);
        let completed = json!({"sourceRunId": source.id, "sourceCheckpointId": checkpoint, "status": final_status});
        exec.emit("replay_completed", completed.clone())?;
        exec.checkpoint("replay_completed", completed)?;
        exec.save()?;
        Ok(exec.run)
    }

    /// `runStore.getRun` + `RunInspector.summarize`: `None` when there is no such run.
    pub fn summary(&self, run_id: &str) -> Result<Option<Value>, AgentError> {
        Ok(self.store.get(run_id)?.map(|run| summarize(&run)))
    }
}
