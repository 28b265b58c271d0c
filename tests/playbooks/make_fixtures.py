#!/usr/bin/env python3
"""Writes tests/playbooks/invalid/*.yaml with their pinned `# expect:` headers.

Each expectation names the offending text; its line:column is computed here by a plain text
search (independent of the compiler) and pinned in the file. Run from the crate root after
editing the list below: python3 tests/playbooks/make_fixtures.py
"""
import os

HERE = os.path.join(os.path.dirname(__file__), "invalid")

def head(incident="tool_failure", start="first", extra=""):
    return f"""playbook: fixture
version: 1
description: Fixture.
match:
  incident: {incident}
{extra}start: {start}
"""

ENDS = """ends:
  done: { outcome: resolved }
  stop: { outcome: abandoned }
"""

def simple(step_body, extra_steps="", **kw):
    return head(**kw) + "steps:\n  first:\n    description: First.\n" + step_body + extra_steps + ENDS

FIXTURES = []

def fixture(name, what, body, expects):
    FIXTURES.append((name, what, body, expects))

# --- YAML syntax, budgets, document shape -------------------------------------------------
fixture("yaml-unclosed-flow-mapping", "a flow mapping that is never closed", simple("    action: inspect_report\n    on: { ok: done\n"),
        [("P001", "ends:", 0, 4)])
fixture("yaml-tab-indentation", "a tab used for indentation", head() + "steps:\n  first:\n\taction: inspect_report\n" + ENDS,
        [("P001", "\taction", 0, 1)])
bomb = "playbook: bomb\nversion: 1\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
for level in range(1, 10):
    prev = f"*x{level-1}"
    bomb += f"x{level}: &x{level} [" + ", ".join([prev] * 10) + "]\n"
fixture("alias-bomb", "billion laughs: nested aliases that expand exponentially", bomb, [("P002", "*x3", 0, 0)])
deep = "playbook: deep\nversion: 1\nsteps: " + "[" * 40 + "]" * 40 + "\n"
fixture("nesting-too-deep", "40 levels of nested lists", deep, [("P002", "[", 31, 0)])
fixture("not-a-mapping", "a list at the top level", "- playbook: fixture\n- version: 1\n", [("P011", "- playbook", 0, 0)])
fixture("empty-document", "only comments", "# nothing here\n", [("P011", "^", 0, 0)])
fixture("two-documents", "two YAML documents in one file", head() + "steps:\n  first:\n    action: inspect_report\n    next: done\n" + ENDS + "---\nplaybook: second\n",
        [("P011", "---", 0, 0)])

# --- types and values ---------------------------------------------------------------------
fixture("version-not-a-number", "version: one", simple("    action: inspect_report\n    next: done\n").replace("version: 1", "version: one"),
        [("P003", "one", 0, 0)])
fixture("unsupported-version", "version: 2", simple("    action: inspect_report\n    next: done\n").replace("version: 1", "version: 2"),
        [("P010", "2", 0, 0)])
fixture("timeout-soon", "timeout: soon (the issue's example)", simple(
    "    action: request_approval\n    timeout: soon\n    on: { approved: done, denied: stop, timeout: stop }\n"),
    [("P004", "soon", 0, 0)])
fixture("timeout-without-unit", "a bare number as a duration", simple(
    "    action: request_approval\n    timeout: 30\n    on: { approved: done, denied: stop, timeout: stop }\n"),
    [("P004", "30", 0, 0)])
fixture("max-visits-not-a-number", "max_visits: three", simple("    action: inspect_report\n    max_visits: three\n    next: done\n"),
        [("P003", "three", 0, 0)])
fixture("max-visits-zero", "max_visits out of range", simple("    action: inspect_report\n    max_visits: 0\n    next: done\n"),
        [("P004", "0\n", 0, 0)])
fixture("steps-is-a-list", "steps written as a list", head() + "steps:\n  - first\n" + ENDS,
        [("P003", "- first", 0, 0)])
fixture("approvers-wrong-type", "approvers: 5", simple(
    "    action: request_approval\n    timeout: 5m\n    approvers: 5\n    on: { approved: done, denied: stop, timeout: stop }\n"),
    [("P003", "5\n", 0, 0)])
fixture("priority-unknown", "step priority: urgent", simple("    action: inspect_report\n    priority: urgent\n    next: done\n"),
        [("P004", "urgent", 0, 0)])
fixture("approval-boolean", "approval: true", simple("    action: cancel_run\n    approval: true\n    next: done\n"),
        [("P004", "true", 0, 0)])
fixture("hook-without-prefix", "approval: requires_approval (no policy. prefix)", simple(
    "    action: cancel_run\n    approval: requires_approval\n    next: done\n"),
    [("P004", "requires_approval", 0, 0)])
fixture("outcome-key-not-a-string", "an integer key in on:", simple("    action: inspect_report\n    on: { 1: done }\n    next: done\n"),
        [("P003", "1:", 0, 0)])
fixture("invalid-step-id", "a step id with a space", head(start="first") + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: bad step\n  bad step:\n    description: Bad.\n    action: inspect_report\n    next: done\n" + ENDS,
        [("P009", "bad step", 0, 0), ("P009", "bad step", 1, 0)])
fixture("reserved-step-id", "a step called skip", head(start="first") + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: skip\n  skip:\n    description: Reserved.\n    action: inspect_report\n    next: done\n" + ENDS,
        [("P009", "skip", 0, 0), ("P009", "skip", 1, 0)])
fixture("not-utf8", "bytes that are not UTF-8", None, [("P012", None, 0, 0)])

# --- unknown names ------------------------------------------------------------------------
fixture("unknown-field-nxt", "nxt: instead of next:", simple("    action: inspect_report\n    nxt: done\n"),
        [("P005", "nxt", 0, 0), ("P042", "first:", 0, 0)])
fixture("unknown-top-level-field", "descripton: at the top level", simple("    action: inspect_report\n    next: done\n").replace("description: Fixture.", "descripton: Fixture."),
        [("P005", "descripton", 0, 0), ("P071", "fixture", 0, 0)])
fixture("unknown-action", "branch_from_chekpoint", simple("    action: branch_from_chekpoint\n    next: done\n"),
        [("P020", "branch_from_chekpoint", 0, 0)])
fixture("unknown-next", "next: resum", simple("    action: inspect_report\n    next: resum\n", extra_steps="  resume:\n    description: Resume.\n    action: inspect_report\n    next: done\n"),
        [("P021", "resum\n", 0, 0)])
fixture("unknown-start", "start names no step", simple("    action: inspect_report\n    next: done\n", start="frist"),
        [("P021", "frist", 0, 0)])
fixture("start-is-an-end", "start names an end", simple("    action: inspect_report\n    next: done\n", start="done"),
        [("P021", "done", 0, 0)])
fixture("unknown-exit-in-on", "an on: exit to a missing step", simple("    action: export_bundle\n    on: { ok: done, failed: escalate }\n"),
        [("P021", "escalate", 0, 0)])
fixture("unknown-incident", "incident: tool_failur", simple("    action: inspect_report\n    next: done\n", incident="tool_failur"),
        [("P022", "tool_failur", 0, 0)])
fixture("unknown-incident-in-list", "one bad kind in a list", simple("    action: inspect_report\n    next: done\n", incident="[tool_failure, queue_failure]"),
        [("P022", "queue_failure", 0, 0)])
fixture("unknown-hook", "policy.requires_aproval (with --policies)", simple("    action: cancel_run\n    approval: policy.requires_aproval\n    next: done\n"),
        [("P023", "policy.requires_aproval", 0, 0)])
fixture("hook-wrong-arity", "checkpoint: calls NAME(ctx); approvers takes (step, ctx)", simple(
    "    action: branch_from_checkpoint\n    checkpoint: policy.approvers\n    next: done\n"),
    [("P023" if False else "P024", "policy.approvers", 0, 0)])

# --- structure of steps -------------------------------------------------------------------
fixture("missing-start", "no start:", (head() + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: done\n" + ENDS).replace("start: first\n", ""),
        [("P006", "playbook", 0, 0)])
fixture("missing-action", "a step without action", simple("    next: done\n"), [("P006", "first", 1, 0)])
fixture("missing-end-outcome", "an end without outcome", head() + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: done\nends:\n  done: { description: Finished. }\n",
        [("P006", "done", 1, 0)])
fixture("duplicate-key", "next: twice in one step", simple("    action: inspect_report\n    next: done\n    next: stop\n"),
        [("P007", "next", 1, 0)])
fixture("duplicate-step-id", "two steps with the same id", head() + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: done\n  first:\n    description: Again.\n    action: inspect_report\n    next: done\n" + ENDS,
        [("P008", "first", 2, 0)])
fixture("step-id-equals-end-id", "a step and an end share an id", head() + "steps:\n  first:\n    description: First.\n    action: inspect_report\n    next: done\n  done:\n    description: Clash.\n    action: inspect_report\n    next: stop\n" + ENDS,
        [("P008", "done", 2, 0)])
fixture("parameter-not-allowed", "duration: on branch_from_checkpoint", simple(
    "    action: branch_from_checkpoint\n    duration: 5m\n    next: done\n"), [("P026", "5m", 0, 0)])
fixture("approval-without-timeout", "request_approval without timeout", simple(
    "    action: request_approval\n    on: { approved: done, denied: stop, timeout: stop }\n"), [("P027", "request_approval", 0, 0)])
fixture("wait-without-duration", "wait without duration", simple("    action: wait\n    next: done\n"), [("P027", "wait", 0, 0)])
fixture("target-creates-no-run", "target: names an inspect step", simple(
    "    action: inspect_report\n    next: resume\n",
    extra_steps="  resume:\n    description: Resume.\n    action: resume_run\n    target: first\n    approval: always\n    next: done\n"),
    [("P028", "first\n", 1, 0)])
fixture("target-may-not-have-run", "the resume is reachable when the branch failed", simple(
    "    action: branch_from_checkpoint\n    next: resume\n",
    extra_steps="  resume:\n    description: Resume.\n    action: resume_run\n    target: first\n    approval: always\n    next: done\n"),
    [("P029", "first\n", 1, 0)])

# --- guards -------------------------------------------------------------------------------
fixture("guard-syntax", "an incomplete comparison", simple("    action: inspect_report\n    when: 'report.failedSteps.len() >'\n    next: done\n"),
        [("P030", "'\n", 0, 0)])
fixture("guard-undefined-variable", "reprot instead of report", simple("    action: inspect_report\n    when: 'reprot.status == \"failed\"'\n    next: done\n"),
        [("P031", "reprot", 0, 0)])
fixture("guard-eval", "eval in a guard", simple("    action: inspect_report\n    when: eval(\"true\")\n    next: done\n"),
        [("P030", "eval", 0, 0)])
fixture("match-guard-undefined", "an undefined variable in match.when", simple("    action: inspect_report\n    next: done\n").replace("  incident: tool_failure\n", "  incident: tool_failure\n  when: 'status == \"failed\"'\n"),
        [("P031", "status", 0, 0)])

# --- outcomes and exits -------------------------------------------------------------------
fixture("outcome-never-produced", "on: { partial: x } on branch_from_checkpoint", simple(
    "    action: branch_from_checkpoint\n    on: { ok: done, failed: stop, partial: stop }\n"), [("P040", "partial", 0, 0)])
fixture("skip-is-not-an-outcome", "on: { skip: x }", simple("    action: inspect_report\n    when: 'true'\n    on: { skip: stop }\n    next: done\n"),
        [("P040", "skip", 0, 0)])
fixture("exhausted-without-max-visits", "on: { exhausted: x } without max_visits", simple("    action: inspect_report\n    on: { ok: done, exhausted: stop }\n"),
        [("P040", "exhausted", 0, 0)])
fixture("unhandled-outcome", "export_bundle without a failed exit", simple("    action: export_bundle\n    on: { ok: done }\n"),
        [("P042", "first:", 0, 0)])
fixture("guard-without-next", "a guarded step with only on:", simple("    action: inspect_report\n    when: 'true'\n    on: { ok: done }\n"),
        [("P043", "'true'", 0, 0)])
fixture("retry-without-failure", "retry on wait", simple("    action: wait\n    duration: 1m\n    retry: { max_attempts: 3 }\n    next: done\n"),
        [("P044", "3", 0, 0)])
fixture("retry-irreversible", "retry on resume_run", simple("    action: resume_run\n    approval: always\n    retry: { max_attempts: 3, backoff: 10s }\n    next: done\n"),
        [("P045", "3", 0, 0)])
fixture("retry-missing-max-attempts", "retry without max_attempts", simple("    action: export_bundle\n    retry: { backoff: 10s }\n    next: done\n"),
        [("P006", "backoff", 0, 0)])

# --- graph checks -------------------------------------------------------------------------
fixture("unreachable-step", "a step nothing leads to", simple("    action: inspect_report\n    next: done\n",
        extra_steps="  orphan:\n    description: Orphan.\n    action: inspect_report\n    next: done\n"), [("P050", "orphan", 0, 0)])
fixture("cannot-terminate", "a bounded loop with no way out", simple("    action: inspect_report\n    next: a\n",
        extra_steps="  a:\n    description: A.\n    action: inspect_report\n    max_visits: 3\n    next: b\n  b:\n    description: B.\n    action: inspect_report\n    next: a\n"),
        [("P051", "first:", 0, 0), ("P051", "a:", 0, 0), ("P051", "b:", 0, 0)])
fixture("unbounded-cycle", "a retry loop without max_visits", simple("    action: export_bundle\n    on: { ok: done, failed: pause }\n",
        extra_steps="  pause:\n    description: Wait a bit.\n    action: wait\n    duration: 10s\n    next: first\n"), [("P052", "first", 1, 0)])
fixture("approval-exits-missing", "request_approval with only approved", simple(
    "    action: request_approval\n    timeout: 10m\n    on: { approved: done }\n    next: stop\n"),
    [("P053", "request_approval", 0, 0), ("P053", "request_approval", 0, 0)])
fixture("irreversible-not-gated", "resume_run straight after a failed tool", simple(
    "    action: inspect_side_effects\n    next: resume\n",
    extra_steps="  resume:\n    description: Resume blindly.\n    action: resume_run\n    next: done\n"), [("P054", "resume:", 0, 0)])
fixture("irreversible-gated-on-one-path-only", "approval on one branch, not the other", simple(
    "    action: inspect_side_effects\n    on: { none: cancel, partial: ask, unknown: ask }\n",
    extra_steps="  ask:\n    description: Ask.\n    action: request_approval\n    timeout: 10m\n    on: { approved: cancel, denied: stop, timeout: stop }\n  cancel:\n    description: Cancel.\n    action: cancel_run\n    next: done\n"),
    [("P054", "cancel:", 0, 0)])
fixture("denied-path-is-not-a-gate", "the denied exit leads to the irreversible step", simple(
    "    action: request_approval\n    timeout: 10m\n    on: { approved: done, denied: cancel, timeout: stop }\n",
    extra_steps="  cancel:\n    description: Cancel.\n    action: cancel_run\n    next: done\n"), [("P054", "cancel:", 0, 0)])
fixture("never-without-why", "approval: never without why", simple("    action: resume_run\n    approval: never\n    next: done\n"),
        [("P055", "never", 0, 0)])

# --- warnings -----------------------------------------------------------------------------
fixture("warning-unused-next", "next with every outcome in on:", simple("    action: export_bundle\n    on: { ok: done, failed: stop }\n    next: done\n"),
        [("P072", "done", 1, 0)])
fixture("warning-approval-on-read-only", "approval: always on inspect_report", simple("    action: inspect_report\n    approval: always\n    next: done\n"),
        [("P073", "always", 0, 0)])
fixture("warning-why-without-never", "why: on a gated step", simple("    action: cancel_run\n    approval: always\n    why: Because.\n    next: done\n"),
        [("P074", "Because.", 0, 0)])
fixture("warning-approvers-without-approval", "approvers on a step that never asks", simple("    action: export_bundle\n    approvers: [sre]\n    next: done\n"),
        [("P075", "[sre]", 0, 0)])
fixture("warning-missing-descriptions", "no descriptions anywhere", "playbook: fixture\nversion: 1\nmatch:\n  incident: tool_failure\nstart: first\nsteps:\n  first:\n    action: inspect_report\n    next: done\nends:\n  done: { outcome: resolved }\n",
        [("P071", "fixture", 0, 0), ("P070", "first:", 0, 0)])

# --- many errors at once ------------------------------------------------------------------
fixture("many-errors-at-once", "every problem of the file is reported", head() + """steps:
  first:
    description: First.
    action: inspect_reprot
    next: second
  second:
    description: Second.
    action: request_approval
    timeout: soon
    on: { approved: done, denied: stop, timeout: stop }
  third:
    description: Third.
    action: wait
    duraton: 5m
    next: done
""" + ENDS, [("P020", "inspect_reprot", 0, 0), ("P004", "soon", 0, 0), ("P005", "duraton", 0, 0), ("P027", "wait", 0, 0)])


def position(text, token, occurrence, delta):
    if token == "^":
        return 1, 1
    start = -1
    for _ in range(occurrence + 1):
        start = text.find(token, start + 1)
        if start < 0:
            raise SystemExit(f"token {token!r} #{occurrence} not found in:\n{text}")
    offset = start + delta
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


os.makedirs(HERE, exist_ok=True)
for name, what, body, expects in FIXTURES:
    path = os.path.join(HERE, name + ".yaml")
    if body is None:
        header = f"# {what}\n# expect: P012 0:0\n"
        with open(path, "wb") as f:
            f.write(header.encode() + b"playbook: \xff\xfe\n")
        continue
    header_lines = 1 + len(expects)
    placeholder = "\n" * header_lines
    full = placeholder + body
    pins = []
    for code, token, occurrence, delta in expects:
        line, column = position(full, token, occurrence, delta)
        pins.append(f"# expect: {code} {line}:{column}")
    header = f"# {what}\n" + "\n".join(pins) + "\n"
    with open(path, "w") as f:
        f.write(header + body)
print(f"{len(FIXTURES)} fixtures")
