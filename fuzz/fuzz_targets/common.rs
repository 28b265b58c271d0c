//! What every target checks besides "no panic": errors render, and their output stays bounded.

use miette::{GraphicalReportHandler, GraphicalTheme};

/// Renders a diagnostic the way `salvage` prints it; panics (a finding) when a line of the
/// output is longer than a reframed snippet can be.
pub fn render_bounded(diagnostic: &dyn miette::Diagnostic) {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_links(false);
    let out = salvage::diagnostics::render(&handler, diagnostic);
    let message_len = diagnostic.to_string().len() + diagnostic.help().map_or(0, |h| h.to_string().len());
    let bound = message_len + 4 * salvage::diagnostics::MAX_SNIPPET_LINE + 200;
    assert!(out.lines().all(|line| line.len() <= bound), "unbounded rendering");
}
