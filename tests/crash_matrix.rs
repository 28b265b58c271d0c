//! The crash matrix: salvage is killed (`kill -9`, or an abort at a journal point) around every
//! effectful action it sends to a live reference-like runtime — at the intent, while the
//! runtime carries the action out, after it answered and before the outcome is journalled, and
//! after the outcome — as the CLI, as the CLI with a daemon running, and as the daemon itself.
//! Then it recovers the way an operator would (`resume`, `confirm --retry`, `confirm --outcome
//! ok --created RUN`, or the daemon on its own). Over every trial: **no external write twice,
//! no run created twice, no created run that no execution names**.
//!
//! Trials are randomised from a seed, printed first; `SALVAGE_CRASH_SEED=<seed>` replays a run
//! of the matrix, `SALVAGE_CRASH_TRIALS=<n>` sets how many trials run (default 100).

mod live_support;
mod runtime_server;

use std::time::Duration;

use serde_json::Value;

use live_support::{Live, wait_for};
use runtime_server::{AppliedAction, DelayOrder, Route, ServerOptions, ToolPolicy};

/// xorshift64*: enough randomness for choosing trials, reproducible from its seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// An effectful step of a chain, and the server route it uses.
#[derive(Debug, Clone, Copy)]
struct Effect {
    step: &'static str,
    route: Route,
    creates: bool,
}

/// A recovery playbook for one incident, with the effectful steps it sends.
#[derive(Debug, Clone, Copy)]
struct Chain {
    name: &'static str,
    incident: &'static str,
    policy: fn() -> ToolPolicy,
    /// The steps, in playbook YAML (the `steps:` body).
    steps: &'static str,
    start: &'static str,
    effects: &'static [Effect],
    /// Whether a person must approve before the effects (the approval is given by `approve`).
    gated: bool,
}

const CHAINS: &[Chain] = &[
    Chain {
        name: "resolve",
        incident: "approval_blocked",
        policy: ToolPolicy::require_approval,
        start: "decide",
        steps: "  decide:\n    action: request_approval\n    description: d\n    approvers: [oncall-sre]\n    timeout: 1h\n    on: { approved: resolve, denied: abandoned, timeout: escalated }\n  resolve:\n    action: resolve_approval\n    description: d\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[Effect { step: "resolve", route: Route::Resume, creates: false }],
        gated: true,
    },
    Chain {
        name: "deny",
        incident: "approval_blocked",
        policy: ToolPolicy::require_approval,
        start: "decide",
        steps: "  decide:\n    action: request_approval\n    description: d\n    approvers: [oncall-sre]\n    timeout: 1h\n    on: { approved: resolved, denied: deny, timeout: escalated }\n  deny:\n    action: deny_approval\n    description: d\n    on: { ok: abandoned, failed: escalated }\n",
        effects: &[Effect { step: "deny", route: Route::Resume, creates: false }],
        gated: true,
    },
    Chain {
        name: "branch-resume",
        incident: "tool_failure",
        policy: || ToolPolicy::fail_first(1),
        start: "branch",
        steps: "  branch:\n    action: branch_from_checkpoint\n    description: d\n    checkpoint: policy.choose_checkpoint\n    approval: never\n    why: crash matrix\n    on: { ok: resume, failed: escalated }\n  resume:\n    action: resume_run\n    description: d\n    target: branch\n    approval: never\n    why: crash matrix\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[
            Effect { step: "branch", route: Route::Branch, creates: true },
            Effect { step: "resume", route: Route::Resume, creates: false },
        ],
        gated: false,
    },
    Chain {
        name: "replay-resume",
        incident: "tool_failure",
        policy: || ToolPolicy::fail_first(1),
        start: "replay",
        steps: "  replay:\n    action: partial_replay\n    description: d\n    checkpoint: policy.choose_checkpoint\n    on: { ok: resume, failed: escalated }\n  resume:\n    action: resume_replay\n    description: d\n    target: replay\n    approval: never\n    why: crash matrix\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[
            Effect { step: "replay", route: Route::Replay, creates: true },
            Effect { step: "resume", route: Route::Resume, creates: false },
        ],
        gated: false,
    },
    Chain {
        name: "frozen",
        incident: "tool_failure",
        policy: || ToolPolicy::fail_first(1),
        start: "copy",
        steps: "  copy:\n    action: frozen_replay\n    description: d\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[Effect { step: "copy", route: Route::Replay, creates: true }],
        gated: false,
    },
    Chain {
        name: "resume-paused",
        incident: "paused_run",
        policy: ToolPolicy::pause_before_tool,
        start: "resume",
        steps: "  resume:\n    action: resume_run\n    description: d\n    approval: never\n    why: crash matrix\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[Effect { step: "resume", route: Route::Resume, creates: false }],
        gated: false,
    },
    Chain {
        name: "cancel",
        incident: "paused_run",
        policy: ToolPolicy::pause_before_tool,
        start: "cancel",
        steps: "  cancel:\n    action: cancel_run\n    description: d\n    approval: never\n    why: crash matrix\n    on: { ok: resolved, failed: escalated }\n",
        effects: &[Effect { step: "cancel", route: Route::Cancel, creates: false }],
        gated: false,
    },
];

/// Where salvage dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// After the intent is journalled, before anything is sent.
    Intent,
    /// While the runtime holds the request: the runtime then carries it out after the client died.
    DuringBeforeEffect,
    /// While the runtime holds the answer: the effect is done, the client dies waiting.
    DuringAfterEffect,
    /// After the runtime answered, before the outcome is journalled.
    Effect,
    /// After the outcome.
    Outcome,
}

/// Who dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The CLI, recovered by the CLI.
    Cli,
    /// The CLI, with a daemon running that takes the execution over.
    CliUnderDaemon,
    /// The daemon, restarted.
    Daemon,
}

#[derive(Debug)]
struct Trial {
    chain: Chain,
    effect: Effect,
    point: Point,
    victim: Victim,
    /// The operator's choice when asked: retry, or say what happened.
    operator_retries: bool,
}

fn playbook(chain: &Chain) -> String {
    format!(
        "playbook: crash-{}\nversion: 1\ndescription: Crash matrix chain.\nmatch: {{ incident: {} }}\npriority: 1000\nstart: {}\nsteps:\n{}ends:\n  resolved: {{ outcome: resolved }}\n  abandoned: {{ outcome: abandoned }}\n  escalated: {{ outcome: escalated }}\n",
        chain.name, chain.incident, chain.start, chain.steps
    )
}

fn applied_for(live: &Live, route: Route, since: usize) -> Vec<AppliedAction> {
    live.server.applied().into_iter().filter(|a| a.route == route && a.seq > since).collect()
}

/// What salvage does to the victim process at a `point` of an `effect`: the crash switch for
/// journal points, a kill -9 while the runtime holds the request or the answer.
fn crash_env(point: Point, effect: &Effect) -> Option<String> {
    match point {
        Point::Intent => Some(format!("intent:{}", effect.step)),
        Point::Effect => Some(format!("effect:{}", effect.step)),
        Point::Outcome => Some(format!("outcome:{}", effect.step)),
        Point::DuringBeforeEffect | Point::DuringAfterEffect => None,
    }
}

/// Answers whatever an execution asks (approvals, operator questions) truthfully, from what the
/// runtime did, until it settles. Returns its final record.
fn settle(live: &Live, run: &str, trial: &Trial, dice: &mut Dice) -> Value {
    for _ in 0..12 {
        let Some(execution) = live.execution_of(run) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let id = execution["executionId"].as_str().unwrap_or_default().to_owned();
        match execution["status"].as_str().unwrap_or_default() {
            "resolved" | "escalated" | "abandoned" | "handed_off" => return execution,
            "waiting_for_approval" => {
                let step = execution["pendingApproval"]["stepId"].as_str().unwrap_or_default().to_owned();
                let verb = if trial.chain.name == "deny" { "deny" } else { "approve" };
                let _ = live.salvage(&[verb, &id, &step, "--as", "oncall-sre"]);
            }
            "needs_operator" => {
                let step = execution["operatorQuestion"]["stepId"].as_str().unwrap_or_default().to_owned();
                let effect = trial.chain.effects.iter().find(|e| e.step == step).copied().unwrap_or(trial.effect);
                let done = applied_for(live, effect.route, 1);
                let answer: Vec<String> =
                    if trial.operator_retries || (done.is_empty() && dice.next().is_multiple_of(2)) {
                        vec!["--retry".into()]
                    } else if done.is_empty() {
                        vec!["--outcome".into(), "failed".into()]
                    } else if effect.creates {
                        let created = done.iter().rev().find_map(|a| a.created_run_id.clone()).unwrap_or_default();
                        vec!["--outcome".into(), "ok".into(), "--created".into(), created]
                    } else {
                        vec!["--outcome".into(), "ok".into()]
                    };
                let mut args = vec!["confirm".to_owned(), id.clone(), step, "--as".into(), "oncall-sre".into()];
                args.extend(answer);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let _ = live.salvage(&refs);
            }
            "running" | "waiting" => {
                // Nobody runs it (its process died, no daemon): continue it.
                if trial.victim == Victim::Cli || execution["status"] == "waiting" {
                    let _ = live.salvage(&["resume", &id]);
                } else {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    live.execution_of(run).unwrap_or(Value::Null)
}

fn run_trial(number: usize, trial: &Trial, dice: &mut Dice) {
    let chain = &trial.chain;
    let dir = tempfile::tempdir().expect("temp");
    let playbooks = dir.path().join("crash-playbooks");
    std::fs::create_dir(&playbooks).expect("mkdir");
    std::fs::write(playbooks.join("crash.yaml"), playbook(chain)).expect("playbook");
    let live = Live::with_playbooks(ServerOptions::new().policy("send_invoice", (chain.policy)()), &playbooks);
    let label = format!("trial {number}: {trial:?}");
    let verb = if chain.name == "deny" { "deny" } else { "approve" };
    let env = crash_env(trial.point, &trial.effect);
    let with_crash = |mut command: std::process::Command| {
        if let Some(point) = &env {
            command.env("SALVAGE_TEST_CRASH_AT", point);
        }
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        command
    };
    // Holds model a runtime that is busy with the request (or the answer) when salvage dies.
    let during = matches!(trial.point, Point::DuringBeforeEffect | Point::DuringAfterEffect);
    let order = if trial.point == Point::DuringBeforeEffect {
        DelayOrder::DelayThenEffect
    } else {
        DelayOrder::EffectThenDelay
    };
    if during {
        live.server.hold(trial.effect.route, order);
    }

    // The victim: a process that gets as far as the chosen point of the chosen effect.
    let mut daemon = None;
    let (run, mut victim) = match (trial.victim, chain.gated) {
        (Victim::Daemon, _) => {
            let victim = with_crash(live.command(&["serve", "--mode", "enforce"])).spawn().expect("serve");
            let pid = victim.id();
            wait_for("the daemon to start", || {
                let status: Value = serde_json::from_slice(&live.salvage(&["status", "--json"]).stdout).ok()?;
                (status["running"] == true && status["daemon"]["pid"] == pid).then_some(())
            });
            (live.incident("send_invoice", &format!("INV-{number}")), victim)
        }
        (Victim::CliUnderDaemon, true) => {
            // The daemon recovers the incident and waits for the person, whose process dies.
            daemon = Some(live.serve(&["--mode", "enforce"]));
            let run = live.incident("send_invoice", &format!("INV-{number}"));
            let id = wait_for("the daemon's approval request", || {
                live.execution_of(&run)
                    .filter(|e| e["status"] == "waiting_for_approval")
                    .and_then(|e| e["executionId"].as_str().map(str::to_owned))
            });
            let victim =
                with_crash(live.command(&[verb, &id, "decide", "--as", "oncall-sre"])).spawn().expect("answer");
            (run, victim)
        }
        (_, true) => {
            let run = live.incident("send_invoice", &format!("INV-{number}"));
            let started = live.json(&["apply", &run, "--yes", "--as", "alice", "--json"]);
            let id = started["executionId"].as_str().unwrap_or_else(|| panic!("{label}: {started}")).to_owned();
            let victim =
                with_crash(live.command(&[verb, &id, "decide", "--as", "oncall-sre"])).spawn().expect("answer");
            (run, victim)
        }
        (_, false) => {
            let run = live.incident("send_invoice", &format!("INV-{number}"));
            let victim = with_crash(live.command(&["apply", &run, "--yes", "--as", "alice"])).spawn().expect("apply");
            (run, victim)
        }
    };
    if during {
        let reached = match order {
            DelayOrder::DelayThenEffect => {
                live.server.wait_for_request(trial.effect.route, Duration::from_secs(30)).is_some()
            }
            DelayOrder::EffectThenDelay => {
                live.server.wait_for_applied(trial.effect.route, Duration::from_secs(30)).is_some()
            }
        };
        assert!(reached, "{label}: the runtime never got the request");
        let _ = victim.kill();
        let _ = victim.wait();
        live.server.release(trial.effect.route);
        live.server.wait_for_applied(trial.effect.route, Duration::from_secs(30)).expect("the runtime carried it out");
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while victim.try_wait().expect("wait").is_none() {
            assert!(std::time::Instant::now() < deadline, "{label}: the victim never reached its crash point");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Recovery: a daemon takes the work over (restarted, or the one still running), else the CLI.
    if trial.victim != Victim::Cli && daemon.is_none() {
        daemon = Some(live.serve(&["--mode", "enforce"]));
    }
    let settled = settle(&live, &run, trial, dice);
    if let Some(daemon) = daemon {
        daemon.kill();
    }

    // The invariants.
    assert!(
        live.server.duplicate_writes().is_empty(),
        "{label}: duplicate writes {:?}",
        live.server.duplicate_writes()
    );
    for effect in chain.effects.iter().filter(|e| e.creates) {
        let made: Vec<_> =
            applied_for(&live, effect.route, 0).into_iter().filter(|a| a.created_run_id.is_some()).collect();
        assert!(made.len() <= 1, "{label}: {} made {} runs: {made:?}", effect.step, made.len());
    }
    let orphans = live.orphans();
    assert!(orphans.is_empty(), "{label}: runs nobody names {orphans:?}; execution {settled}");
    let status = settled["status"].as_str().unwrap_or_default();
    assert!(
        matches!(status, "resolved" | "escalated" | "abandoned" | "handed_off"),
        "{label}: the execution did not settle: {settled}; runs {:?}",
        live.server.run_ids()
    );
    assert_eq!(live.executions().len(), 1, "{label}: one recovery of the incident");
    eprintln!(
        "  {number:>3} {:<14} {:<8} {:<19} {:<15} → {status}",
        chain.name,
        trial.effect.step,
        format!("{:?}", trial.point),
        format!("{:?}", trial.victim)
    );
}

#[test]
fn no_crash_anywhere_repeats_a_side_effect_or_loses_a_run() {
    let seed = std::env::var("SALVAGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| live_support::unique() as u64 | 1);
    let trials: usize = std::env::var("SALVAGE_CRASH_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    eprintln!("crash matrix: seed {seed} ({trials} trials; replay with SALVAGE_CRASH_SEED={seed})");
    let mut dice = Dice(seed);
    let points = [Point::Intent, Point::DuringBeforeEffect, Point::DuringAfterEffect, Point::Effect, Point::Outcome];
    let victims = [Victim::Cli, Victim::CliUnderDaemon, Victim::Daemon];
    for number in 1..=trials {
        let chain = *dice.pick(CHAINS);
        let victim = match *dice.pick(&victims) {
            // A daemon answers no approval: a person's process does, so for chains behind an
            // approval the process that dies is that person's.
            Victim::Daemon if chain.gated => Victim::CliUnderDaemon,
            other => other,
        };
        let trial = Trial {
            chain,
            effect: *dice.pick(chain.effects),
            point: *dice.pick(&points),
            victim,
            operator_retries: dice.next().is_multiple_of(2),
        };
        run_trial(number, &trial, &mut dice);
    }
}
