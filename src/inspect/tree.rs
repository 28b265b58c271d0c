//! `RunTreeInspector`: runs arranged by `metadata.lineage.parentRunId`, with metrics summed
//! over each subtree, and its ASCII rendering.
//!
//! Unlike the reference, which lists (and summarises) every run of the store for any tree:
//! - a tree for one root reads only that root's family ([`RunStore::subtree`]), and of each
//!   run only its kept [`TreeLeaf`] ([`RunStore::tree_leaves`]): no run of it is decoded;
//! - the whole-store forest is shaped from index entries, and [`render_index_forest`] draws it
//!   without loading a single run; [`write_forest_json`] writes it with summaries from the
//!   kept leaves, family by family, paging through the index of a store that scans (SQLite,
//!   PostgreSQL) so that memory does not grow with the store;
//! - a lineage cycle (a run that is its own parent, or parents that point at each other) is cut
//!   at one edge and reported as a [`LineageCycle`], where the reference recurses forever or
//!   silently drops the runs from the forest;
//! - an unreadable run is reported as an [`UnreadableRun`] instead of failing everything;
//! - a built tree stops at [`MAX_TREE_DEPTH`] levels and [`MAX_TREE_RUNS`] runs (breadth
//!   first), shaped from index entries so that the runs left out are never read; each node
//!   counts those below it in `omittedRuns`. Lineage is user data: a 100,000-run chain must not
//!   become 100,000 nested nodes, whose derived `Clone`, `Drop` and `Serialize` recurse;
//! - drawn trees stop indenting after [`MAX_DRAWN_INDENT`] levels, so text is linear in runs.
//!
//! salvage's own view, [`lineage_forest`] (`salvage tree --lineage`), draws each branch and
//! replay under the run it came from, shaped and bounded by the same code.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::ops::{Bound, Range};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::InspectError;
use super::{NumberTotals, RunSummary, TokenTotals, summarize};
use crate::limits::{MAX_DRAWN_INDENT, MAX_TREE_DEPTH, MAX_TREE_RUNS};
use crate::model::json::JsNumber;
use crate::model::{LeafMetrics, Run, RunStatus, TreeLeaf};
use crate::store::{
    ForestMark, ForestPlace, ForestScanPage, LineageLink, ListingKey, RunIndexEntry, RunQuery, RunStore, StoreProblem,
};

/// One run in a tree: `{id, status, input, createdAt, lineage, summary, subtreeMetrics,
/// children}` as the reference builds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTreeNode {
    pub id: String,
    pub status: RunStatus,
    pub input: Value,
    /// `timestamps.createdAt`, or `null`.
    pub created_at: Option<String>,
    pub lineage: Value,
    pub summary: RunSummary,
    pub subtree_metrics: SubtreeMetrics,
    /// Sorted by `createdAt` (the id when there is none; exact ties by id).
    pub children: Vec<RunTreeNode>,
    /// Runs below this one that the tree leaves out (deeper than [`MAX_TREE_DEPTH`] levels or
    /// past [`MAX_TREE_RUNS`] runs); they are not in `subtreeMetrics` either.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted_runs: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl RunTreeNode {
    /// Runs left out directly below this one (not below one of its children).
    fn omitted_here(&self) -> u64 {
        omitted_directly_below(self.omitted_runs, self.children.iter().map(|child| child.omitted_runs))
    }
}

/// Metrics of a run plus everything below it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtreeMetrics {
    pub run_count: u64,
    pub token_usage: TokenTotals,
    pub cost: JsNumber,
    pub timings: NumberTotals,
}

/// A parent link salvage ignored to break a lineage cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageCycle {
    /// The runs on the cycle, starting at the cut run, each followed by its parent.
    pub run_ids: Vec<String>,
    /// The run whose `parentRunId` was ignored; it is shown as a root.
    pub cut_run_id: String,
    /// The `parentRunId` that was ignored.
    pub ignored_parent_run_id: String,
}

impl fmt::Display for LineageCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain: Vec<&str> = self.run_ids.iter().map(String::as_str).collect();
        chain.push(&self.cut_run_id);
        write!(
            f,
            "lineage cycle {} (each run's parentRunId is the next); ignored parentRunId \"{}\" of run \"{}\"",
            chain.join(" → "),
            self.ignored_parent_run_id,
            self.cut_run_id
        )
    }
}

/// A run the store holds but that could not be read or summarised; it is left out of the
/// tree (with the runs below it when the tree has one root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnreadableRun {
    pub run_id: Option<String>,
    pub message: String,
}

impl From<StoreProblem> for UnreadableRun {
    fn from(problem: StoreProblem) -> Self {
        UnreadableRun { run_id: problem.run_id, message: problem.error.to_string() }
    }
}

/// The tree below one run (`RunTreeInspector.build(store, {rootRunId})`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunTree {
    /// `None` when the run is not in the store (the reference's `null`).
    pub root: Option<RunTreeNode>,
    /// Runs of the family the tree leaves out (the root's `omittedRuns`).
    pub omitted_runs: u64,
    pub lineage_cycles: Vec<LineageCycle>,
    pub unreadable_runs: Vec<UnreadableRun>,
}

/// Every tree of a store (`RunTreeInspector.build(store)`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunForest {
    /// Roots in listing order (creation time, then id).
    pub roots: Vec<RunTreeNode>,
    /// Runs the trees leave out (the sum of the roots' `omittedRuns`).
    pub omitted_runs: u64,
    pub lineage_cycles: Vec<LineageCycle>,
    pub unreadable_runs: Vec<UnreadableRun>,
}

/// The whole-store forest drawn from index entries alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexForestRender {
    pub text: String,
    pub lineage_cycles: Vec<LineageCycle>,
    pub unreadable_runs: Vec<UnreadableRun>,
}

/// The tree rooted at `root_run_id`, reading only that run and the runs below it.
///
/// The root is the requested run even when it has a parent. A malformed root is an error;
/// a malformed or unreadable run below it is left out (with its own subtree) and reported.
pub async fn build_tree(store: &dyn RunStore, root_run_id: &str) -> Result<RunTree, InspectError> {
    build_tree_knowing(store, root_run_id, None).await
}

/// [`build_tree`] when one member of the family was just read from `store`: it is used as it is
/// instead of being read and decoded again (an incident report knows its run).
pub async fn build_tree_knowing(
    store: &dyn RunStore,
    root_run_id: &str,
    known: Option<&Run>,
) -> Result<RunTree, InspectError> {
    let family = store.subtree(root_run_id).await?;
    let mut unreadable: Vec<UnreadableRun> = family.problems.into_iter().map(UnreadableRun::from).collect();
    let Some(root_position) = family.items.iter().position(|entry| entry.id == root_run_id) else {
        return Ok(RunTree { unreadable_runs: unreadable, ..RunTree::default() });
    };
    // Shaped and bounded from the index, so that only the runs the tree shows are read.
    let entries: Vec<ShapeEntry<'_>> = family.items.iter().map(ShapeEntry::of_entry).collect();
    let mut shape = Shape::rooted(&entries, root_position);
    let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
    let shown = shape.post_order();
    let known = known.filter(|run| shown.iter().any(|position| family.items[*position].id == run.id));
    let to_read: Vec<String> = shown
        .iter()
        .map(|position| family.items[*position].id.clone())
        .filter(|id| known.is_none_or(|run| run.id != *id))
        .collect();
    // Each run's kept leaf holds its node's head and metrics: nothing of the family is decoded.
    let leaves = store.tree_leaves(&to_read).await?;
    unreadable.extend(leaves.problems.into_iter().map(UnreadableRun::from));
    let mut nodes: HashMap<String, RunTreeNode> = HashMap::with_capacity(shown.len());
    let mut unsummarised = Vec::new();
    for (run_id, leaf) in leaves.items {
        match leaf {
            TreeLeaf::Node { head, metrics } => match node_of_leaf(&head, &metrics) {
                Ok(node) => {
                    nodes.insert(run_id, node);
                }
                Err(error) => unsummarised.push(UnreadableRun {
                    message: format!("run \"{run_id}\": its kept tree leaf cannot be read: {error}"),
                    run_id: Some(run_id),
                }),
            },
            // The root's own error is the tree's: read the run to give it in full.
            TreeLeaf::Malformed(_) if run_id == root_run_id => {
                if let Some(stored) = store.get(root_run_id).await? {
                    summarize(&stored.run)?;
                }
            }
            TreeLeaf::Malformed(message) => unsummarised.push(left_out(run_id, message)),
        }
    }
    if let Some(run) = known {
        nodes.insert(run.id.clone(), leaf_node(run, summarize(run)?));
    }
    if !nodes.contains_key(root_run_id) {
        return Ok(RunTree { unreadable_runs: unreadable, ..RunTree::default() });
    }
    let mut roots = assemble(&shape, &omitted, |position| nodes.remove(&family.items[position].id));
    unreadable.append(&mut unsummarised);
    let root = roots.pop();
    Ok(RunTree {
        omitted_runs: root.as_ref().map_or(0, |root| root.omitted_runs),
        root,
        lineage_cycles: shape.cycles,
        unreadable_runs: unreadable,
    })
}

/// The head of a tree node as a kept [`TreeLeaf`] holds it (see `model::tree_leaf`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeafHead {
    id: String,
    status: RunStatus,
    input: Value,
    created_at: Option<String>,
    lineage: Value,
    summary: RunSummary,
}

/// The node [`leaf_node`] makes of a run, made from the run's kept leaf instead.
fn node_of_leaf(head: &str, metrics: &LeafMetrics) -> Result<RunTreeNode, serde_json::Error> {
    let head: LeafHead = serde_json::from_str(head)?;
    Ok(RunTreeNode {
        id: head.id,
        status: head.status,
        input: head.input,
        created_at: head.created_at,
        lineage: head.lineage,
        summary: head.summary,
        subtree_metrics: SubtreeMetrics::of_leaf(metrics),
        children: Vec::new(),
        omitted_runs: 0,
    })
}

/// Runs [`build_forest`] loads and summarises at a time.
const FOREST_CHUNK: usize = 1000;

/// Every tree of the store, each bounded like [`build_tree`]'s. Reads only the runs the trees
/// show (each node carries its run's summary), a chunk at a time. To draw every run of a large
/// store, use [`render_store_forest`].
pub async fn build_forest(store: &dyn RunStore) -> Result<RunForest, InspectError> {
    let listed = store.list(&RunQuery::all()).await?;
    let mut unreadable: Vec<UnreadableRun> = listed.problems.into_iter().map(UnreadableRun::from).collect();
    // Shaped and bounded from the index: only the runs the trees show are read.
    let (shape, omitted, shown) = shape_store_forest(&listed.items);
    let mut nodes: Vec<Option<RunTreeNode>> = (0..listed.items.len()).map(|_| None).collect();
    let mut unsummarised = Vec::new();
    for chunk in shown.chunks(FOREST_CHUNK) {
        let position_of: HashMap<&str, usize> =
            chunk.iter().map(|position| (listed.items[*position].id.as_str(), *position)).collect();
        let ids: Vec<String> = chunk.iter().map(|position| listed.items[*position].id.clone()).collect();
        let loaded = store.get_many(&ids).await?;
        unreadable.extend(loaded.problems.into_iter().map(UnreadableRun::from));
        for stored in loaded.items {
            let Some(position) = position_of.get(stored.run.id.as_str()).copied() else { continue };
            match summarize(&stored.run) {
                Ok(summary) => nodes[position] = Some(leaf_node(&stored.run, summary)),
                Err(error) => unsummarised.push(unsummarisable(&stored.run, &error)),
            }
        }
    }
    let roots = assemble_forest(&shape, &omitted, |position| nodes[position].take());
    unreadable.append(&mut unsummarised);
    Ok(RunForest {
        omitted_runs: roots.iter().map(|root| root.omitted_runs).sum(),
        roots,
        lineage_cycles: shape.cycles,
        unreadable_runs: unreadable,
    })
}

/// The whole store's forest shaped from its index and bounded like [`build_tree`]'s trees: the
/// shape, what each node leaves out, and the positions in `items` of the runs shown, ascending
/// (the order their records are read in).
fn shape_store_forest(items: &[RunIndexEntry]) -> (Shape, Vec<u64>, Vec<usize>) {
    let (shape, omitted) = pruned_store_shape(items);
    let mut shown = shape.post_order();
    shown.sort_unstable();
    (shape, omitted, shown)
}

/// The whole store's forest shaped from its index and pruned, with what each node leaves out.
fn pruned_store_shape(items: &[RunIndexEntry]) -> (Shape, Vec<u64>) {
    let entries: Vec<ShapeEntry<'_>> = items.iter().map(ShapeEntry::of_entry).collect();
    let mut shape = Shape::forest(&entries);
    let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
    (shape, omitted)
}

/// What [`write_forest_json`] found besides the forest it wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForestFindings {
    /// Runs the trees leave out (the sum of the roots' `omittedRuns`).
    pub omitted_runs: u64,
    pub lineage_cycles: Vec<LineageCycle>,
    pub unreadable_runs: Vec<UnreadableRun>,
}

/// Runs [`write_forest_json`] reads at a time (whole families; a larger family alone), in two
/// reads at once, while it writes the families read before.
const FOREST_BATCH: usize = FOREST_CHUNK * 2;

/// A node of a family being written: its head (read from the store) and what the tree adds.
struct PlannedNode {
    head: String,
    subtree_metrics: SubtreeMetrics,
    omitted_runs: u64,
    children: Vec<PlannedNode>,
}

impl Assembled for PlannedNode {
    fn parts(&mut self) -> (&mut SubtreeMetrics, &mut u64, &mut Vec<Self>) {
        (&mut self.subtree_metrics, &mut self.omitted_runs, &mut self.children)
    }
}

/// Writes [`build_forest`]'s roots to `out` as compact JSON (`[node, …]`, the same values
/// `serde_json` writes for them) without building the forest: runs come from
/// [`RunStore::tree_leaves`], which stores that keep each run's [`TreeLeaf`] beside its record
/// serve without decoding a run. The forest is written one family (a root and the runs shown
/// below it) at a time, each run's leaf read once, a batch of families ahead of the one being
/// written. A store that scans ([`RunStore::forest_scan`]) is paged through in listing order
/// ([`write_scanned_forest`]); the others' forest is shaped from their whole index first.
/// Besides the index of a store that does not scan, memory holds a batch of families, and the
/// trees that must wait for a family listed earlier (a run listed before its root: created
/// before it).
pub async fn write_forest_json(store: &dyn RunStore, out: &mut dyn Write) -> Result<ForestFindings, InspectError> {
    write_forest_json_in_batches(store, out, FOREST_BATCH).await
}

/// [`write_forest_json`] reading about `batch_runs` runs at a time.
async fn write_forest_json_in_batches(
    store: &dyn RunStore,
    out: &mut dyn Write,
    batch_runs: usize,
) -> Result<ForestFindings, InspectError> {
    match store.forest_scan(None, batch_runs).await? {
        Some(first) => write_scanned_forest(store, out, batch_runs, first).await,
        None => write_listed_forest(store, out, batch_runs).await,
    }
}

/// [`write_forest_json`] for a store that does not scan: the forest is shaped from the whole
/// listing, then written a batch of families at a time.
async fn write_listed_forest(
    store: &dyn RunStore,
    out: &mut dyn Write,
    batch_runs: usize,
) -> Result<ForestFindings, InspectError> {
    let listed = store.list(&RunQuery::all()).await?;
    let mut unreadable: Vec<UnreadableRun> = listed.problems.into_iter().map(UnreadableRun::from).collect();
    let (shape, omitted) = pruned_store_shape(&listed.items);
    // Only the ids are needed from here on.
    let ids: Vec<String> = listed.items.into_iter().map(|entry| entry.id).collect();
    let families = Families::of(&shape);
    let batches = families.batches(batch_runs);
    let mut writer = FamilyWriter {
        shape: &shape,
        omitted: &omitted,
        ids: &ids,
        trees: TreeSink::open(out).map_err(InspectError::Output)?,
        omitted_runs: 0,
        unreadable: Unreadable::default(),
    };
    let mut leaves = match batches.first() {
        Some(batch) => read_family_leaves(store, &ids, families.runs_of(batch.clone())).await?,
        None => ForestLeaves::default(),
    };
    for (index, batch) in batches.iter().enumerate() {
        let read_next = async {
            match batches.get(index + 1) {
                Some(next) => read_family_leaves(store, &ids, families.runs_of(next.clone())).await,
                None => Ok(ForestLeaves::default()),
            }
        };
        let current = std::mem::take(&mut leaves);
        // Biased: the next batch's reads start on the blocking pool before this one is written.
        let (next, written) =
            tokio::join!(biased; read_next, async { writer.write_families(&families, batch.clone(), current) });
        written?;
        leaves = next?;
    }
    writer.trees.close().map_err(InspectError::Output)?;
    let omitted_runs = writer.omitted_runs;
    unreadable.extend(writer.unreadable.in_listing_order());
    Ok(ForestFindings { omitted_runs, lineage_cycles: shape.cycles, unreadable_runs: unreadable })
}

/// The trees of a pruned forest, in the order [`write_forest_json`] writes them.
struct Families {
    /// Every tree's shown runs, tree after tree, each from its root down (pre-order).
    runs: Vec<usize>,
    /// Each tree's first run in listing order and its range in `runs`, ordered by that run: a
    /// tree's own trees to write (its root, and the runs below a run that cannot be read) list
    /// no earlier than it, so once the trees before are written, those before it can be.
    spans: Vec<(usize, Range<usize>)>,
}

impl Families {
    fn of(shape: &Shape) -> Families {
        let mut runs = Vec::with_capacity(shape.children.len());
        let mut spans = Vec::with_capacity(shape.roots.len());
        let mut stack = Vec::new();
        for root in &shape.roots {
            let start = runs.len();
            stack.push(*root);
            while let Some(position) = stack.pop() {
                runs.push(position);
                stack.extend(shape.children[position].iter().rev());
            }
            let first_listed = runs[start..].iter().copied().min().unwrap_or(*root);
            spans.push((first_listed, start..runs.len()));
        }
        // Positions are distinct, and so are the trees' first runs.
        spans.sort_unstable_by_key(|(first_listed, _)| *first_listed);
        Families { runs, spans }
    }

    /// Consecutive families (indexes into `spans`) of at least `runs` runs together, the last
    /// one fewer.
    fn batches(&self, runs: usize) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let (mut start, mut counted) = (0, 0);
        for (index, (_, span)) in self.spans.iter().enumerate() {
            counted += span.len();
            if counted >= runs {
                batches.push(start..index + 1);
                (start, counted) = (index + 1, 0);
            }
        }
        if start < self.spans.len() {
            batches.push(start..self.spans.len());
        }
        batches
    }

    /// The positions of the runs of the families in `batch`.
    fn runs_of(&self, batch: Range<usize>) -> Vec<usize> {
        self.spans[batch].iter().flat_map(|(_, span)| self.runs[span.clone()].iter().copied()).collect()
    }

    /// The position the family after `index` lists first at (none after the last).
    fn next_first_listed(&self, index: usize) -> usize {
        self.spans.get(index + 1).map_or(usize::MAX, |(first_listed, _)| *first_listed)
    }
}

/// The leaves read for runs of the forest, by run id, and the runs left out.
struct ForestLeaves<K> {
    nodes: HashMap<String, (String, LeafMetrics)>,
    unreadable: Unreadable<K>,
}

impl<K> Default for ForestLeaves<K> {
    fn default() -> Self {
        ForestLeaves { nodes: HashMap::new(), unreadable: Unreadable::default() }
    }
}

/// Runs the forest leaves out because their record or their leaf could not be read, each at its
/// place in the listing (`None`: not known).
struct Unreadable<K> {
    records: Vec<(Option<K>, UnreadableRun)>,
    leaves: Vec<(Option<K>, UnreadableRun)>,
}

impl<K> Default for Unreadable<K> {
    fn default() -> Self {
        Unreadable { records: Vec::new(), leaves: Vec::new() }
    }
}

impl<K: Ord> Unreadable<K> {
    fn append(&mut self, other: &mut Unreadable<K>) {
        self.records.append(&mut other.records);
        self.leaves.append(&mut other.leaves);
    }

    /// Those whose records and then those whose leaves could not be read, each in listing
    /// order (as when the runs are read in that order; places not known last).
    fn in_listing_order(self) -> impl Iterator<Item = UnreadableRun> {
        let in_order = |mut runs: Vec<(Option<K>, UnreadableRun)>| {
            runs.sort_by(|(left, _), (right, _)| match (left, right) {
                (Some(left), Some(right)) => left.cmp(right),
                (left, right) => right.is_some().cmp(&left.is_some()),
            });
            runs.into_iter().map(|(_, run)| run)
        };
        in_order(self.records).chain(in_order(self.leaves))
    }
}

/// Reads the leaves of `run_ids`, in two reads at once (stores serve them on two blocking
/// threads); `place` gives a run's place in the listing.
async fn read_forest_leaves<K>(
    store: &dyn RunStore,
    run_ids: &[String],
    place: impl Fn(&str) -> Option<K>,
) -> Result<ForestLeaves<K>, InspectError> {
    let loaded = super::trace::read_in_halves(run_ids, |half| store.tree_leaves(half)).await?;
    let mut leaves = ForestLeaves { nodes: HashMap::with_capacity(run_ids.len()), unreadable: Unreadable::default() };
    for problem in loaded.problems {
        let at = problem.run_id.as_deref().and_then(&place);
        leaves.unreadable.records.push((at, UnreadableRun::from(problem)));
    }
    for (run_id, leaf) in loaded.items {
        match leaf {
            TreeLeaf::Node { head, metrics } => {
                leaves.nodes.insert(run_id, (head, metrics));
            }
            TreeLeaf::Malformed(message) => leaves.unreadable.leaves.push((place(&run_id), left_out(run_id, message))),
        }
    }
    Ok(leaves)
}

/// Reads the leaves of the runs at `positions` of the listing `ids`.
async fn read_family_leaves(
    store: &dyn RunStore,
    ids: &[String],
    positions: Vec<usize>,
) -> Result<ForestLeaves<usize>, InspectError> {
    let wanted: Vec<String> = positions.iter().map(|position| ids[*position].clone()).collect();
    let position_of: HashMap<&str, usize> =
        positions.iter().map(|position| (ids[*position].as_str(), *position)).collect();
    read_forest_leaves(store, &wanted, |id| position_of.get(id).copied()).await
}

/// Writes families as their leaves arrive, holding back the trees that list after a family not
/// written yet.
struct FamilyWriter<'a> {
    shape: &'a Shape,
    omitted: &'a [u64],
    /// The listing's ids, by position.
    ids: &'a [String],
    /// Trees by position in the listing.
    trees: TreeSink<'a, usize>,
    omitted_runs: u64,
    unreadable: Unreadable<usize>,
}

impl FamilyWriter<'_> {
    /// Writes the families of `batch` (indexes into `families.spans`), whose leaves are `leaves`.
    fn write_families(
        &mut self,
        families: &Families,
        batch: Range<usize>,
        mut leaves: ForestLeaves<usize>,
    ) -> Result<(), InspectError> {
        let io = InspectError::Output;
        self.unreadable.append(&mut leaves.unreadable);
        for index in batch {
            let runs = &families.runs[families.spans[index].1.clone()];
            let (roots, orphans) = assemble_positions(
                self.shape,
                self.omitted,
                runs.iter().rev().copied(),
                &runs[..runs.len().min(1)],
                HashMap::with_capacity(runs.len()),
                |position| {
                    let (head, own) = leaves.nodes.remove(&self.ids[position])?;
                    Some(PlannedNode {
                        head,
                        subtree_metrics: SubtreeMetrics::of_leaf(&own),
                        omitted_runs: 0,
                        children: Vec::new(),
                    })
                },
            );
            let mut trees = roots;
            trees.extend(orphans);
            trees.sort_unstable_by_key(|(position, _)| *position);
            let next_first_listed = families.next_first_listed(index);
            for (position, tree) in trees {
                self.omitted_runs += tree.omitted_runs;
                self.trees.put(position, tree, position < next_first_listed).map_err(io)?;
            }
            self.trees.flush(&Bound::Excluded(next_first_listed)).map_err(io)?;
        }
        Ok(())
    }
}

/// The whole-store forest's `[tree, …]` as it is written: trees that list after a family not
/// written yet wait as text, by their place in the listing, until the trees before them are out.
struct TreeSink<'a, K> {
    out: &'a mut dyn Write,
    /// Nothing written yet after the opening `[`.
    first: bool,
    waiting: BTreeMap<K, Vec<u8>>,
}

impl<'a, K: Ord> TreeSink<'a, K> {
    fn open(out: &'a mut dyn Write) -> std::io::Result<TreeSink<'a, K>> {
        out.write_all(b"[")?;
        Ok(TreeSink { out, first: true, waiting: BTreeMap::new() })
    }

    /// Writes `tree`, listed at `key`, now (after the waiting trees listed before it) or, when
    /// a family not written yet may list before it, keeps it waiting.
    fn put(&mut self, key: K, tree: PlannedNode, now: bool) -> std::io::Result<()> {
        if now {
            self.flush(&Bound::Excluded(key))?;
            self.separate()?;
            write_planned_tree(&mut *self.out, tree)
        } else {
            let mut text = Vec::new();
            write_planned_tree(&mut text, tree)?;
            self.waiting.insert(key, text);
            Ok(())
        }
    }

    /// Writes the waiting trees listed within `bound`.
    fn flush(&mut self, bound: &Bound<K>) -> std::io::Result<()> {
        while let Some(entry) = self.waiting.first_entry() {
            if !within(entry.key(), bound) {
                break;
            }
            let text = entry.remove();
            self.separate()?;
            self.out.write_all(&text)?;
        }
        Ok(())
    }

    /// Writes the trees still waiting and the closing `]`.
    fn close(mut self) -> std::io::Result<()> {
        self.flush(&Bound::Unbounded)?;
        self.out.write_all(b"]")
    }

    /// The comma before every tree but the first.
    fn separate(&mut self) -> std::io::Result<()> {
        if std::mem::replace(&mut self.first, false) { Ok(()) } else { self.out.write_all(b",") }
    }
}

/// [`write_forest_json`] for a store that scans ([`RunStore::forest_scan`]): the store is read a
/// page of `batch_runs` runs at a time in listing order, and each family is written when the
/// scan reaches its first run. That run is the family's root, or a run listed before its parent
/// ([`ForestPlace::BeforeParent`]); from such a run the walk up the parents finds the family's
/// root, or a lineage cycle, cut at its first-listed member as [`Shape::forest`] cuts it. So
/// the trees come out in [`build_forest`]'s order, and memory holds three pages (one scanned,
/// one being read, one being written), not the store: besides them only the families started
/// ahead of their root, the trees waiting for an earlier-listed one to be written, and the
/// walks up from runs listed before their parent (all three empty in a store whose runs are
/// created after their parents).
///
/// The scan and the families read only the index's lineage columns (id, parent, creation
/// time). A row whose lineage column was edited by hand to a value that is not text stops the
/// forest with an error naming the database, where the listed forest reports that
/// run and goes on; other columns are not read here, so a damaged status or revision does not
/// keep a run out of the scanned forest.
async fn write_scanned_forest(
    store: &dyn RunStore,
    out: &mut dyn Write,
    batch_runs: usize,
    first: ForestScanPage,
) -> Result<ForestFindings, InspectError> {
    let mut starts = FamilyStarts::default();
    let mut writer = ScannedForestWriter {
        trees: TreeSink::open(out).map_err(InspectError::Output)?,
        omitted_runs: 0,
        lineage_cycles: Vec::new(),
        index_problems: Vec::new(),
        unreadable: Unreadable::default(),
    };
    // Three stages at once: the page after next is scanned while the next one's families and
    // leaves are read and this one is written.
    let scan_after = |page: &ForestScanPage| (!page.at_end).then(|| page.last.clone()).flatten();
    let mut scanned = match scan_after(&first) {
        Some(after) => Some(scan_page(store, &after, batch_runs).await?),
        None => None,
    };
    let mut current = Some(read_scanned_page(store, &mut starts, first).await?);
    while let Some(page) = current.take() {
        let after = scanned.as_ref().and_then(scan_after);
        let scan_next = async {
            match &after {
                Some(after) => scan_page(store, after, batch_runs).await.map(Some),
                None => Ok(None),
            }
        };
        let read_next = async {
            match scanned.take() {
                Some(page) => read_scanned_page(store, &mut starts, page).await.map(Some),
                None => Ok(None),
            }
        };
        // Biased: the reads start on the blocking pool before this page is written.
        let (next_scanned, next, written) =
            tokio::join!(biased; scan_next, read_next, async { writer.write_page(page) });
        written?;
        current = next?;
        scanned = next_scanned?;
    }
    writer.finish().map_err(InspectError::Output)
}

/// The page of a forest scan after `after`.
async fn scan_page(
    store: &dyn RunStore,
    after: &ListingKey,
    batch_runs: usize,
) -> Result<ForestScanPage, InspectError> {
    let page = store.forest_scan(Some(after), batch_runs).await?;
    page.ok_or_else(|| crate::store::StoreError::Task(format!("{} stopped scanning its runs", store.spec())).into())
}

/// Where the walk up the parents from a run ends.
#[derive(Debug, Clone)]
enum WalkEnd {
    /// At the root of its family.
    Root(ListingKey),
    /// On or below the lineage cycle cut at this run.
    Cycle(LineageLink),
}

/// The families a forest scan has started so far.
#[derive(Default)]
struct FamilyStarts {
    /// Roots whose family was started at a run listed before them.
    started_early: HashSet<String>,
    /// The cut runs of the lineage cycles started.
    cycles_started: HashSet<String>,
    /// Where the walks up from the runs listed before their parent ended, for each run walked.
    walked: HashMap<String, WalkEnd>,
    /// `walked` is thinned once it holds more runs than this.
    thin_at: usize,
}

impl FamilyStarts {
    /// The runs whose families start at `marks` (roots, and the cut runs of lineage cycles), in
    /// the marks' order, with the runs the walks up could not read.
    async fn roots_at(
        &mut self,
        store: &dyn RunStore,
        marks: &[ForestMark],
    ) -> Result<(Vec<(ListingKey, LineageLink)>, Vec<UnreadableRun>), InspectError> {
        let before_parent =
            marks.iter().filter(|mark| mark.place == ForestPlace::BeforeParent).map(|mark| mark.key.id.clone());
        let problems = self.walk_up(store, before_parent.collect()).await?;
        let mut roots = Vec::new();
        for mark in marks {
            match mark.place {
                ForestPlace::Root => {
                    if !self.started_early.remove(&mark.key.id) {
                        roots.push((mark.key.clone(), LineageLink::root_at(&mark.key)));
                    }
                }
                ForestPlace::BeforeParent => match self.walked.get(&mark.key.id) {
                    // A root listed before this run has been written already, and a family or
                    // cycle started before is not started again.
                    Some(WalkEnd::Root(root)) if *root > mark.key && self.started_early.insert(root.id.clone()) => {
                        roots.push((mark.key.clone(), LineageLink::root_at(root)));
                    }
                    Some(WalkEnd::Cycle(cut)) if self.cycles_started.insert(cut.id.clone()) => {
                        roots.push((mark.key.clone(), cut.clone()));
                    }
                    _ => {}
                },
            }
        }
        Ok((roots, problems))
    }

    /// Walks up the parents from each of `starts` (a level of all the walks per store call) and
    /// records where each run on the way leads.
    async fn walk_up(&mut self, store: &dyn RunStore, starts: Vec<String>) -> Result<Vec<UnreadableRun>, InspectError> {
        struct Walk {
            path: Vec<RunIndexEntry>,
            on_path: HashSet<String>,
            next: String,
        }
        let mut walks: Vec<Walk> = starts
            .into_iter()
            .filter(|id| !self.walked.contains_key(id))
            .map(|next| Walk { path: Vec::new(), on_path: HashSet::new(), next })
            .collect();
        let mut problems = Vec::new();
        while !walks.is_empty() {
            let wanted: Vec<String> = walks
                .iter()
                .filter(|walk| !self.walked.contains_key(&walk.next) && !walk.on_path.contains(&walk.next))
                .map(|walk| walk.next.clone())
                .collect();
            let found = store.list_ids(&wanted).await?;
            problems.extend(found.problems.into_iter().map(UnreadableRun::from));
            let entry_of: HashMap<String, RunIndexEntry> =
                found.items.into_iter().map(|entry| (entry.id.clone(), entry)).collect();
            let mut going_on = Vec::with_capacity(walks.len());
            for mut walk in walks {
                let end = if let Some(end) = self.walked.get(&walk.next) {
                    Some(end.clone())
                } else if walk.on_path.contains(&walk.next) {
                    // Back on the path: the runs from `next` on form a cycle, cut at its first-listed run.
                    let start = walk.path.iter().position(|entry| entry.id == walk.next).unwrap_or(0);
                    let cut = walk.path[start..].iter().min_by_key(|entry| ListingKey::of(entry));
                    cut.map(|cut| WalkEnd::Cycle(LineageLink::of(cut)))
                } else if let Some(entry) = entry_of.get(&walk.next) {
                    let parent = entry.parent_run_id.clone();
                    walk.on_path.insert(entry.id.clone());
                    walk.path.push(entry.clone());
                    match parent {
                        Some(parent) => {
                            walk.next = parent;
                            None
                        }
                        None => Some(WalkEnd::Root(ListingKey::of(entry))),
                    }
                } else {
                    // `next` is not in the store (or cannot be read): the run below it is a root.
                    // A walk that read nothing began at a run removed since the scan.
                    walk.path.last().map(|entry| WalkEnd::Root(ListingKey::of(entry)))
                };
                match end {
                    Some(end) => {
                        for entry in walk.path {
                            self.walked.insert(entry.id, end.clone());
                        }
                    }
                    None if !walk.path.is_empty() => going_on.push(walk),
                    None => {}
                }
            }
            walks = going_on;
        }
        Ok(problems)
    }

    /// Forgets the walks that ended at a root the scan has passed (a walk into them again finds
    /// that root written), once there are many.
    fn thin(&mut self, scanned: &ListingKey) {
        if self.walked.len() <= self.thin_at {
            return;
        }
        self.walked.retain(|_, end| !matches!(end, WalkEnd::Root(root) if *root <= *scanned));
        self.thin_at = (self.walked.len() * 2).max(FOREST_BATCH);
    }
}

/// Below twice this many families, one read of them is quicker than two.
const FAMILY_HALF: usize = 32;

/// A family a forest scan reached, shaped and pruned like [`build_tree`]'s.
struct ScannedFamily {
    /// The run the scan started it at.
    start: ListingKey,
    entries: Vec<LineageLink>,
    shape: Shape,
    omitted: Vec<u64>,
}

/// A page of a forest scan: its families, and the leaves of the runs they show.
struct ScannedPage {
    families: Vec<ScannedFamily>,
    leaves: ForestLeaves<ListingKey>,
    last: Option<ListingKey>,
    at_end: bool,
    index_problems: Vec<UnreadableRun>,
}

/// Starts the families at a scanned page's marks, reads their members and the leaves of the
/// runs the pruned trees show.
async fn read_scanned_page(
    store: &dyn RunStore,
    starts: &mut FamilyStarts,
    page: ForestScanPage,
) -> Result<ScannedPage, InspectError> {
    let (roots, mut index_problems) = starts.roots_at(store, &page.marks).await?;
    if let Some(last) = &page.last {
        starts.thin(last);
    }
    let (starts, root_links): (Vec<ListingKey>, Vec<LineageLink>) = roots.into_iter().unzip();
    // Two reads at once, as the leaves are read below: stores serve them on two blocking threads.
    let members = if root_links.len() >= 2 * FAMILY_HALF {
        let (first, second) = root_links.split_at(root_links.len() / 2);
        let (first, second) = tokio::join!(store.families(first), store.families(second));
        let mut members = first?;
        members.extend(second?);
        members
    } else {
        store.families(&root_links).await?
    };
    let mut families = Vec::with_capacity(starts.len());
    let mut shown_ids = Vec::new();
    for ((start, root), family) in starts.into_iter().zip(&root_links).zip(members) {
        index_problems.extend(family.problems.into_iter().map(UnreadableRun::from));
        let entries = family.items;
        let Some(root) = entries.iter().position(|entry| entry.id == root.id) else { continue };
        let shape_entries: Vec<ShapeEntry<'_>> = entries.iter().map(ShapeEntry::of_link).collect();
        let mut shape = Shape::rooted(&shape_entries, root);
        let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
        shown_ids.extend(shape.post_order().into_iter().map(|position| entries[position].id.clone()));
        families.push(ScannedFamily { start, entries, shape, omitted });
    }
    let key_of: HashMap<&str, &LineageLink> =
        families.iter().flat_map(|family| family.entries.iter().map(|entry| (entry.id.as_str(), entry))).collect();
    let leaves =
        read_forest_leaves(store, &shown_ids, |id| key_of.get(id).map(|entry| ListingKey::of_link(entry))).await?;
    Ok(ScannedPage { families, leaves, last: page.last, at_end: page.at_end, index_problems })
}

/// Writes the families of a forest scan, holding back the trees that list after a family not
/// written yet.
struct ScannedForestWriter<'a> {
    trees: TreeSink<'a, ListingKey>,
    omitted_runs: u64,
    lineage_cycles: Vec<LineageCycle>,
    index_problems: Vec<UnreadableRun>,
    unreadable: Unreadable<ListingKey>,
}

impl ScannedForestWriter<'_> {
    fn write_page(&mut self, page: ScannedPage) -> Result<(), InspectError> {
        let io = InspectError::Output;
        let ScannedPage { families, mut leaves, last, at_end, index_problems } = page;
        self.index_problems.extend(index_problems);
        self.unreadable.append(&mut leaves.unreadable);
        // Every family a later page starts lists after this page's last run.
        let page_bound = match (&last, at_end) {
            (Some(last), false) => Bound::Included(last.clone()),
            _ => Bound::Unbounded,
        };
        let starts: Vec<ListingKey> = families.iter().map(|family| family.start.clone()).collect();
        for (index, mut family) in families.into_iter().enumerate() {
            let bound = starts.get(index + 1).map_or_else(|| page_bound.clone(), |next| Bound::Excluded(next.clone()));
            self.lineage_cycles.append(&mut family.shape.cycles);
            let (roots, orphans) = assemble_positions(
                &family.shape,
                &family.omitted,
                family.shape.post_order(),
                &family.shape.roots,
                HashMap::new(),
                |position| {
                    let (head, own) = leaves.nodes.remove(&family.entries[position].id)?;
                    Some(PlannedNode {
                        head,
                        subtree_metrics: SubtreeMetrics::of_leaf(&own),
                        omitted_runs: 0,
                        children: Vec::new(),
                    })
                },
            );
            let mut trees: Vec<(ListingKey, PlannedNode)> = roots
                .into_iter()
                .chain(orphans)
                .map(|(position, tree)| (ListingKey::of_link(&family.entries[position]), tree))
                .collect();
            trees.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
            for (key, tree) in trees {
                self.omitted_runs += tree.omitted_runs;
                let now = within(&key, &bound);
                self.trees.put(key, tree, now).map_err(io)?;
            }
            self.trees.flush(&bound).map_err(io)?;
        }
        self.trees.flush(&page_bound).map_err(io)?;
        Ok(())
    }

    /// Closes the forest and gives what it found besides its trees, in the order
    /// [`write_listed_forest`] gives it: the runs the index could not give, then those whose
    /// records and then whose leaves could not be read, each in listing order.
    fn finish(self) -> std::io::Result<ForestFindings> {
        self.trees.close()?;
        let mut unreadable_runs: Vec<UnreadableRun> = Vec::new();
        for run in self.index_problems {
            // Several families' reads may meet the same unreadable row.
            if !unreadable_runs.contains(&run) {
                unreadable_runs.push(run);
            }
        }
        unreadable_runs.extend(self.unreadable.in_listing_order());
        Ok(ForestFindings { omitted_runs: self.omitted_runs, lineage_cycles: self.lineage_cycles, unreadable_runs })
    }
}

/// Whether `key` lists within `bound` (an upper bound).
fn within<K: Ord>(key: &K, bound: &Bound<K>) -> bool {
    match bound {
        Bound::Included(limit) => key <= limit,
        Bound::Excluded(limit) => key < limit,
        Bound::Unbounded => true,
    }
}

/// Writes one tree as `serde_json` writes its [`RunTreeNode`]s (without recursion).
fn write_planned_tree(out: &mut dyn Write, root: PlannedNode) -> std::io::Result<()> {
    // Nodes to open, and the closing text owed once a node's children are written.
    enum Step {
        Open(PlannedNode, bool),
        Close(u64),
    }
    let mut stack = vec![Step::Open(root, true)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Open(node, first) => {
                if !first {
                    out.write_all(b",")?;
                }
                out.write_all(node.head.strip_suffix('}').unwrap_or(&node.head).as_bytes())?;
                out.write_all(b",\"subtreeMetrics\":")?;
                serde_json::to_writer(&mut *out, &node.subtree_metrics)?;
                out.write_all(b",\"children\":[")?;
                stack.push(Step::Close(node.omitted_runs));
                stack.extend(node.children.into_iter().enumerate().rev().map(|(i, child)| Step::Open(child, i == 0)));
            }
            Step::Close(omitted_runs) => {
                out.write_all(b"]")?;
                if omitted_runs != 0 {
                    write!(out, ",\"omittedRuns\":{omitted_runs}")?;
                }
                out.write_all(b"}")?;
            }
        }
    }
    Ok(())
}

/// The tree rooted at `root_run_id` over a set of runs (for runs that are not in a store,
/// such as an imported bundle).
pub fn tree_from_runs(runs: &[Run], root_run_id: &str) -> Result<RunTree, InspectError> {
    let Some(root_index) = runs.iter().position(|run| run.id == root_run_id) else {
        return Ok(RunTree::default());
    };
    let root_summary = summarize(&runs[root_index])?;
    let (summaries, unreadable_runs) = summarize_all(runs, Some((root_index, root_summary)));
    let readable: Vec<usize> = (0..runs.len()).filter(|index| summaries[*index].is_some()).collect();
    let entries: Vec<ShapeEntry<'_>> = readable.iter().map(|index| ShapeEntry::of_run(&runs[*index])).collect();
    let position_of_root = readable.iter().position(|index| *index == root_index).unwrap_or(0);
    let mut shape = Shape::rooted(&entries, position_of_root);
    let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
    let mut nodes = assemble(&shape, &omitted, |position| {
        let index = readable[position];
        summaries[index].clone().map(|summary| leaf_node(&runs[index], summary))
    });
    let root = nodes.pop();
    Ok(RunTree {
        omitted_runs: root.as_ref().map_or(0, |root| root.omitted_runs),
        root,
        lineage_cycles: shape.cycles,
        unreadable_runs,
    })
}

/// Every tree over a set of runs given in listing order; roots keep that order.
pub fn forest_from_runs(runs: &[Run]) -> RunForest {
    let (summaries, unreadable_runs) = summarize_all(runs, None);
    let readable: Vec<usize> = (0..runs.len()).filter(|index| summaries[*index].is_some()).collect();
    let entries: Vec<ShapeEntry<'_>> = readable.iter().map(|index| ShapeEntry::of_run(&runs[*index])).collect();
    let mut shape = Shape::forest(&entries);
    let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
    let roots = assemble_forest(&shape, &omitted, |position| {
        let index = readable[position];
        summaries[index].clone().map(|summary| leaf_node(&runs[index], summary))
    });
    RunForest {
        omitted_runs: roots.iter().map(|root| root.omitted_runs).sum(),
        roots,
        lineage_cycles: shape.cycles,
        unreadable_runs,
    }
}

fn summarize_all(runs: &[Run], known: Option<(usize, RunSummary)>) -> (Vec<Option<RunSummary>>, Vec<UnreadableRun>) {
    let mut known = known;
    let mut unreadable = Vec::new();
    let summaries = runs
        .iter()
        .enumerate()
        .map(|(index, run)| {
            if let Some((known_index, _)) = &known
                && *known_index == index
            {
                return known.take().map(|(_, summary)| summary);
            }
            match summarize(run) {
                Ok(summary) => Some(summary),
                Err(error) => {
                    unreadable.push(unsummarisable(run, &error));
                    None
                }
            }
        })
        .collect();
    (summaries, unreadable)
}

fn unsummarisable(run: &Run, error: &InspectError) -> UnreadableRun {
    left_out(run.id.clone(), error.to_string())
}

/// A run the tree leaves out because it cannot be summarised (logged once, here).
fn left_out(run_id: String, message: String) -> UnreadableRun {
    tracing::warn!(%run_id, error = %message, "run left out of the run tree");
    UnreadableRun { run_id: Some(run_id), message }
}

fn leaf_node(run: &Run, summary: RunSummary) -> RunTreeNode {
    RunTreeNode {
        id: run.id.clone(),
        status: run.status.clone(),
        input: run.input.clone(),
        created_at: run.created_at().map(str::to_owned),
        lineage: run.lineage().reference_value(),
        summary,
        subtree_metrics: SubtreeMetrics::of_leaf(&LeafMetrics::of(run)),
        children: Vec::new(),
        omitted_runs: 0,
    }
}

impl SubtreeMetrics {
    /// The metrics of one run alone.
    fn of_leaf(metrics: &LeafMetrics) -> SubtreeMetrics {
        SubtreeMetrics {
            run_count: 1,
            token_usage: metrics.token_usage,
            cost: metrics.cost,
            timings: metrics.timing_totals(),
        }
    }
}

/// A node [`assemble_positions`] builds: its subtree metrics, omitted runs and children.
trait Assembled: Sized {
    fn parts(&mut self) -> (&mut SubtreeMetrics, &mut u64, &mut Vec<Self>);
}

impl Assembled for RunTreeNode {
    fn parts(&mut self) -> (&mut SubtreeMetrics, &mut u64, &mut Vec<Self>) {
        (&mut self.subtree_metrics, &mut self.omitted_runs, &mut self.children)
    }
}

/// Builds the nested nodes of a pruned `shape` bottom-up (without recursion), adding each
/// child's subtree metrics and omitted runs to its parent in child order; `omitted` is what
/// [`Shape::prune`] cut below each position. Returns the roots; a run `make` cannot make is
/// left out with the runs below it.
fn assemble(shape: &Shape, omitted: &[u64], make: impl FnMut(usize) -> Option<RunTreeNode>) -> Vec<RunTreeNode> {
    whole_shape(shape, omitted, make).0.into_iter().map(|(_, node)| node).collect()
}

/// [`assemble`] for a forest: the runs below a run `make` cannot make become roots, in listing
/// order among the others (as when that run is not in the store at all).
fn assemble_forest<N: Assembled>(shape: &Shape, omitted: &[u64], make: impl FnMut(usize) -> Option<N>) -> Vec<N> {
    let (mut roots, orphans) = whole_shape(shape, omitted, make);
    roots.extend(orphans);
    roots.sort_by_key(|(position, _)| *position);
    roots.into_iter().map(|(_, node)| node).collect()
}

/// [`assemble_positions`] over every tree of `shape`.
#[allow(clippy::type_complexity)]
fn whole_shape<N: Assembled>(
    shape: &Shape,
    omitted: &[u64],
    make: impl FnMut(usize) -> Option<N>,
) -> (Vec<(usize, N)>, Vec<(usize, N)>) {
    let built: Vec<Option<N>> = (0..shape.children.len()).map(|_| None).collect();
    assemble_positions(shape, omitted, shape.post_order(), &shape.roots, built, make)
}

/// Where [`assemble_positions`] keeps the nodes built until their parent takes them.
trait BuiltNodes<N> {
    fn put(&mut self, position: usize, node: N);
    fn take(&mut self, position: usize) -> Option<N>;
}

/// Every position of a shape.
impl<N> BuiltNodes<N> for Vec<Option<N>> {
    fn put(&mut self, position: usize, node: N) {
        self[position] = Some(node);
    }

    fn take(&mut self, position: usize) -> Option<N> {
        self.get_mut(position).and_then(Option::take)
    }
}

/// The positions of one family.
impl<N> BuiltNodes<N> for HashMap<usize, N> {
    fn put(&mut self, position: usize, node: N) {
        self.insert(position, node);
    }

    fn take(&mut self, position: usize) -> Option<N> {
        self.remove(&position)
    }
}

/// The trees below `roots` and the orphans (the children of runs `make` could not make), with
/// positions; `order` lists the positions to build, children before their parent.
#[allow(clippy::type_complexity)]
fn assemble_positions<N: Assembled>(
    shape: &Shape,
    omitted: &[u64],
    order: impl IntoIterator<Item = usize>,
    roots: &[usize],
    mut built: impl BuiltNodes<N>,
    mut make: impl FnMut(usize) -> Option<N>,
) -> (Vec<(usize, N)>, Vec<(usize, N)>) {
    let mut orphans = Vec::new();
    for position in order {
        let Some(mut node) = make(position) else {
            for child in &shape.children[position] {
                if let Some(node) = built.take(*child) {
                    orphans.push((*child, node));
                }
            }
            continue;
        };
        let (metrics, omitted_runs, children) = node.parts();
        *omitted_runs = omitted.get(position).copied().unwrap_or(0);
        for child in &shape.children[position] {
            let Some(mut child) = built.take(*child) else { continue };
            let (child_metrics, child_omitted, _) = child.parts();
            metrics.run_count += child_metrics.run_count;
            metrics.token_usage.prompt += child_metrics.token_usage.prompt;
            metrics.token_usage.completion += child_metrics.token_usage.completion;
            metrics.token_usage.total += child_metrics.token_usage.total;
            metrics.cost += child_metrics.cost;
            for (key, value) in &child_metrics.timings.0 {
                metrics.timings.add(key, *value);
            }
            *omitted_runs += *child_omitted;
            children.push(child);
        }
        built.put(position, node);
    }
    let roots = roots.iter().filter_map(|root| built.take(*root).map(|node| (*root, node))).collect();
    (roots, orphans)
}

/// Draws a tree or forest exactly as `RunTreeInspector.render` does: roots at column 0,
/// children behind `├─ ` / `└─ `, continuation `│  ` / three spaces, ` [<status>]` after each
/// id when `include_status`, lines joined by `\n`, no trailing newline.
pub fn render(roots: &[RunTreeNode], include_status: bool) -> String {
    let handles: Vec<&RunTreeNode> = roots.iter().collect();
    render_lines(
        &handles,
        |node| {
            let mut text = label(&node.id, node.status.as_str(), include_status);
            push_omitted_note(&mut text, node.omitted_here());
            text
        },
        |node| node.children.iter().collect(),
    )
}

fn label(id: &str, status: &str, include_status: bool) -> String {
    if include_status { format!("{id} [{status}]") } else { id.to_owned() }
}

/// The runs left out directly below a node: all left out below it, less those its children
/// account for (plain trees and lineage trees alike).
fn omitted_directly_below(omitted: u64, children: impl Iterator<Item = u64>) -> u64 {
    omitted.saturating_sub(children.sum())
}

/// ` (N more runs below, not shown)` after a drawn node that had runs left out below it.
fn push_omitted_note(text: &mut String, count: u64) {
    match count {
        0 => {}
        1 => text.push_str(" (1 more run below, not shown)"),
        count => text.push_str(&format!(" ({count} more runs below, not shown)")),
    }
}

/// Draws the lines of a tree walked with an explicit stack. Indentation stops growing after
/// [`MAX_DRAWN_INDENT`] levels (deeper lines say `(+N)`, N the levels not drawn), so that the
/// text of a 100,000-run chain is linear in its runs, not quadratic.
fn render_lines<H: Copy>(roots: &[H], label: impl Fn(H) -> String, children: impl Fn(H) -> Vec<H>) -> String {
    struct Frame<H> {
        node: H,
        prefix: String,
        /// Levels drawn in `prefix`.
        drawn: usize,
        /// Levels beyond `prefix`, not drawn.
        hidden: usize,
        is_last: bool,
        is_root: bool,
    }
    let mut out = String::new();
    let mut first = true;
    let mut stack: Vec<Frame<H>> = roots
        .iter()
        .rev()
        .map(|root| Frame { node: *root, prefix: String::new(), drawn: 0, hidden: 0, is_last: true, is_root: true })
        .collect();
    while let Some(frame) = stack.pop() {
        let connector = match (frame.is_root, frame.is_last) {
            (true, _) => "",
            (false, true) => "└─ ",
            (false, false) => "├─ ",
        };
        if !std::mem::replace(&mut first, false) {
            out.push('\n');
        }
        out.push_str(&frame.prefix);
        if frame.hidden > 0 {
            out.push_str(&format!("(+{}) ", frame.hidden));
        }
        out.push_str(connector);
        out.push_str(&label(frame.node));
        let (prefix, drawn, hidden) = match (frame.is_root, frame.is_last) {
            (true, _) => (String::new(), 0, 0),
            _ if frame.drawn >= MAX_DRAWN_INDENT => (frame.prefix, frame.drawn, frame.hidden + 1),
            (false, true) => (format!("{}   ", frame.prefix), frame.drawn + 1, 0),
            (false, false) => (format!("{}│  ", frame.prefix), frame.drawn + 1, 0),
        };
        let kids = children(frame.node);
        let last = kids.len().saturating_sub(1);
        for (index, child) in kids.into_iter().enumerate().rev() {
            stack.push(Frame {
                node: child,
                prefix: prefix.clone(),
                drawn,
                hidden,
                is_last: index == last,
                is_root: false,
            });
        }
    }
    out
}

/// Draws the whole-store forest from index entries (id, status, parent, creation time) in any
/// order, exactly as [`render`] would draw [`build_forest`]'s roots.
pub fn render_index_forest(entries: &[RunIndexEntry], include_status: bool) -> IndexForestRender {
    let mut sorted: Vec<&RunIndexEntry> = entries.iter().collect();
    sorted.sort_by(|left, right| RunIndexEntry::listing_order(left, right));
    let shape_entries: Vec<ShapeEntry<'_>> = sorted
        .iter()
        .map(|entry| ShapeEntry {
            id: &entry.id,
            parent: entry.parent_run_id.as_deref(),
            created_at: entry.created_at.as_deref(),
        })
        .collect();
    let shape = Shape::forest(&shape_entries);
    let text = render_lines(
        &shape.roots,
        |position| label(&sorted[position].id, sorted[position].status.as_str(), include_status),
        |position| shape.children[position].clone(),
    );
    IndexForestRender { text, lineage_cycles: shape.cycles, unreadable_runs: Vec::new() }
}

/// Draws the store's forest from its index, without loading any run.
pub async fn render_store_forest(
    store: &dyn RunStore,
    include_status: bool,
) -> Result<IndexForestRender, InspectError> {
    let listed = store.list(&RunQuery::all()).await?;
    let mut render = render_index_forest(&listed.items, include_status);
    render.unreadable_runs = listed.problems.into_iter().map(UnreadableRun::from).collect();
    Ok(render)
}

/// The lineage fields tree shaping needs.
struct ShapeEntry<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    created_at: Option<&'a str>,
}

impl<'a> ShapeEntry<'a> {
    fn of_run(run: &'a Run) -> ShapeEntry<'a> {
        ShapeEntry { id: &run.id, parent: run.parent_run_id(), created_at: run.created_at() }
    }

    fn of_entry(entry: &'a RunIndexEntry) -> ShapeEntry<'a> {
        ShapeEntry { id: &entry.id, parent: entry.parent_run_id.as_deref(), created_at: entry.created_at.as_deref() }
    }

    fn of_link(link: &'a LineageLink) -> ShapeEntry<'a> {
        ShapeEntry { id: &link.id, parent: link.parent_run_id.as_deref(), created_at: link.created_at.as_deref() }
    }

    /// What the reference sorts siblings by: `createdAt`, or the id without one.
    fn sort_key(&self) -> &'a str {
        self.created_at.unwrap_or(self.id)
    }
}

/// The tree structure over entries given in listing order: positions, not runs.
struct Shape {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
    cycles: Vec<LineageCycle>,
}

impl Shape {
    /// Parent positions: an entry's parent when that run is among the entries.
    fn parents(entries: &[ShapeEntry<'_>]) -> Vec<Option<usize>> {
        let mut position_of: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (position, entry) in entries.iter().enumerate() {
            position_of.entry(entry.id).or_insert(position);
        }
        entries.iter().map(|entry| entry.parent.and_then(|parent| position_of.get(parent).copied())).collect()
    }

    fn forest(entries: &[ShapeEntry<'_>]) -> Shape {
        let mut parents = Shape::parents(entries);
        let mut cycles = Vec::new();
        let mut reached = vec![false; entries.len()];
        let mut children = children_of(&parents, entries.len());
        let mut roots: Vec<usize> = (0..entries.len()).filter(|position| parents[*position].is_none()).collect();
        for root in &roots {
            mark_reachable(*root, &children, &mut reached);
        }
        // Whatever no root reaches hangs off a parent cycle: cut each cycle at its member that
        // lists first, which then shows as a root.
        for start in 0..entries.len() {
            if reached[start] {
                continue;
            }
            let cycle = cycle_from(start, &parents);
            let Some(&cut) = cycle.iter().min() else { continue };
            let ignored = parents[cut].take();
            if let Some(parent) = ignored {
                children[parent].retain(|child| *child != cut);
            }
            cycles.push(lineage_cycle(entries, &cycle, cut, ignored));
            roots.push(cut);
            mark_reachable(cut, &children, &mut reached);
        }
        roots.sort_unstable();
        sort_children(entries, &mut children);
        Shape { roots, children, cycles }
    }

    /// The tree below `root` (whose own parent link is ignored).
    fn rooted(entries: &[ShapeEntry<'_>], root: usize) -> Shape {
        let mut parents = Shape::parents(entries);
        let mut cycles = Vec::new();
        if let Some(parent) = parents[root].take() {
            // The root's parent is below the root only if the parent chain comes back to it.
            let mut chain = vec![root];
            let mut seen = HashSet::from([root]);
            let mut current = Some(parent);
            while let Some(position) = current {
                if position == root {
                    cycles.push(lineage_cycle(entries, &chain, root, Some(parent)));
                    break;
                }
                if !seen.insert(position) {
                    break;
                }
                chain.push(position);
                current = parents[position];
            }
        }
        let mut children = children_of(&parents, entries.len());
        let mut reached = vec![false; entries.len()];
        mark_reachable(root, &children, &mut reached);
        for (position, kids) in children.iter_mut().enumerate() {
            if !reached[position] {
                kids.clear();
            }
        }
        sort_children(entries, &mut children);
        Shape { roots: vec![root], children, cycles }
    }

    /// Bounds every tree of the shape to `max_depth` levels and `max_runs` runs, kept breadth
    /// first; returns, for each position, how many runs were cut directly below it.
    fn prune(&mut self, max_depth: usize, max_runs: usize) -> Vec<u64> {
        let sizes = self.subtree_sizes();
        let mut omitted = vec![0u64; self.children.len()];
        for root in self.roots.clone() {
            let mut shown = 1;
            let mut queue = VecDeque::from([(root, 1)]);
            while let Some((position, depth)) = queue.pop_front() {
                let kids = std::mem::take(&mut self.children[position]);
                let mut kept = Vec::with_capacity(kids.len());
                for child in kids {
                    if depth < max_depth && shown < max_runs {
                        shown += 1;
                        kept.push(child);
                        queue.push_back((child, depth + 1));
                    } else {
                        omitted[position] += sizes[child];
                    }
                }
                self.children[position] = kept;
            }
        }
        omitted
    }

    /// The number of runs in each position's subtree (itself included).
    fn subtree_sizes(&self) -> Vec<u64> {
        let mut sizes = vec![1u64; self.children.len()];
        for position in self.post_order() {
            let below: u64 = self.children[position].iter().map(|child| sizes[*child]).sum();
            sizes[position] += below;
        }
        sizes
    }

    /// Every position reachable from the roots, children before their parent.
    fn post_order(&self) -> Vec<usize> {
        let mut order = Vec::new();
        let mut stack: Vec<(usize, bool)> = self.roots.iter().rev().map(|root| (*root, false)).collect();
        while let Some((position, expanded)) = stack.pop() {
            if expanded {
                order.push(position);
                continue;
            }
            stack.push((position, true));
            for child in self.children[position].iter().rev() {
                stack.push((*child, false));
            }
        }
        order
    }
}

fn children_of(parents: &[Option<usize>], len: usize) -> Vec<Vec<usize>> {
    let mut children = vec![Vec::new(); len];
    for (position, parent) in parents.iter().enumerate() {
        if let Some(parent) = parent {
            children[*parent].push(position);
        }
    }
    children
}

fn sort_children(entries: &[ShapeEntry<'_>], children: &mut [Vec<usize>]) {
    for kids in children.iter_mut() {
        kids.sort_by(|left, right| {
            let (left, right) = (&entries[*left], &entries[*right]);
            left.sort_key().cmp(right.sort_key()).then_with(|| left.id.cmp(right.id))
        });
    }
}

fn mark_reachable(start: usize, children: &[Vec<usize>], reached: &mut [bool]) {
    let mut stack = vec![start];
    while let Some(position) = stack.pop() {
        if std::mem::replace(&mut reached[position], true) {
            continue;
        }
        stack.extend(children[position].iter().copied());
    }
}

/// Follows parent links from `start` (which no root reaches, so the links must loop) and
/// returns the loop's members in link order.
fn cycle_from(start: usize, parents: &[Option<usize>]) -> Vec<usize> {
    let mut path: Vec<usize> = Vec::new();
    let mut index_in_path: HashMap<usize, usize> = HashMap::new();
    let mut current = Some(start);
    while let Some(position) = current {
        if let Some(first) = index_in_path.get(&position) {
            return path.split_off(*first);
        }
        index_in_path.insert(position, path.len());
        path.push(position);
        current = parents[position];
    }
    Vec::new()
}

fn lineage_cycle(entries: &[ShapeEntry<'_>], cycle: &[usize], cut: usize, ignored: Option<usize>) -> LineageCycle {
    let start = cycle.iter().position(|position| *position == cut).unwrap_or(0);
    let run_ids =
        cycle[start..].iter().chain(&cycle[..start]).map(|position| entries[*position].id.to_owned()).collect();
    let cycle = LineageCycle {
        run_ids,
        cut_run_id: entries[cut].id.to_owned(),
        ignored_parent_run_id: ignored.map(|position| entries[position].id.to_owned()).unwrap_or_default(),
    };
    tracing::warn!(%cycle, "lineage cycle cut");
    cycle
}

// -------------------------------------------------------------------------------------------
// Lineage: recoveries drawn under the run they came from (`salvage tree --lineage`).
// -------------------------------------------------------------------------------------------

/// How a run in a lineage tree came from the run it is drawn under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineageRelation {
    /// Drawn at the top.
    Root,
    /// A structural child (`parentRunId`).
    Child,
    /// A branch from a checkpoint of the run above (`lineage.branchOriginRunId`).
    Branch,
    /// A replay of the run above (`metadata.replay.sourceRunId`).
    Replay,
}

/// The salvage execution step that created a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedBy {
    pub execution_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The incident run that execution recovers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_run_id: Option<String>,
}

/// A run derived from another: which run, from which checkpoint, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageOrigin {
    pub run_id: String,
    pub checkpoint_id: Option<String>,
    pub relation: LineageRelation,
}

/// What lineage trees need of one run (read once; the run itself is not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct LineageEntry {
    pub id: String,
    pub status: RunStatus,
    pub created_at: Option<String>,
    pub parent_run_id: Option<String>,
    /// Where a branch or replay came from (never the run itself).
    pub origin: Option<LineageOrigin>,
    /// `metadata.salvage`: the execution step that created the run, as the run records it.
    pub created_by: Option<CreatedBy>,
}

impl LineageEntry {
    /// A replay names its source in `metadata.replay.sourceRunId` (and, partial, in
    /// `lineage.branchOriginRunId` too); a branch only in the lineage.
    pub fn of(run: &Run) -> LineageEntry {
        let replay = run.metadata.get("replay");
        let replay_source = replay.and_then(|r| r.get("sourceRunId")).and_then(Value::as_str);
        let lineage = run.lineage();
        let origin = match (replay_source, &lineage.branch_origin_run_id) {
            (Some(source), _) => Some(LineageOrigin {
                run_id: source.to_owned(),
                checkpoint_id: replay
                    .and_then(|r| r.get("sourceCheckpointId"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| lineage.branch_checkpoint_id.clone()),
                relation: LineageRelation::Replay,
            }),
            (None, Some(origin)) => Some(LineageOrigin {
                run_id: origin.clone(),
                checkpoint_id: lineage.branch_checkpoint_id.clone(),
                relation: LineageRelation::Branch,
            }),
            (None, None) => None,
        }
        .filter(|origin| origin.run_id != run.id);
        let salvage = run.metadata.get("salvage");
        let created_by =
            salvage.and_then(|s| s.get("executionId")).and_then(Value::as_str).map(|execution| CreatedBy {
                execution_id: execution.to_owned(),
                step_id: salvage.and_then(|s| s.get("stepId")).and_then(Value::as_str).map(str::to_owned),
                incident_run_id: None,
            });
        LineageEntry {
            id: run.id.clone(),
            status: run.status.clone(),
            created_at: run.created_at().map(str::to_owned),
            parent_run_id: run.parent_run_id().map(str::to_owned),
            origin,
            created_by,
        }
    }
}

/// One run in a lineage tree: `{id, status, createdAt, relation, fromCheckpointId?,
/// createdBy?, children, omittedRuns?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageNode {
    pub id: String,
    pub status: RunStatus,
    pub created_at: Option<String>,
    pub relation: LineageRelation,
    /// For a branch or replay: the checkpoint of the run above it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_checkpoint_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<CreatedBy>,
    /// Sorted like [`RunTreeNode::children`].
    pub children: Vec<LineageNode>,
    /// Runs below this one the tree leaves out (bounded like [`RunTreeNode`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted_runs: u64,
}

impl LineageNode {
    fn omitted_here(&self) -> u64 {
        omitted_directly_below(self.omitted_runs, self.children.iter().map(|child| child.omitted_runs))
    }
}

/// Lineage trees: the roots in listing order, bounded like [`RunForest`]'s.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineageForest {
    pub roots: Vec<LineageNode>,
    pub omitted_runs: u64,
    /// Parent or origin links that loop, each cut at one run.
    pub lineage_cycles: Vec<LineageCycle>,
    pub unreadable_runs: Vec<UnreadableRun>,
}

/// Shapes runs (in listing order) into lineage trees: a branch or replay under the run it came
/// from when that run is among them, every other run under its parent. With `root`, only the
/// tree below that run (empty when it is not among them). `created_by` (by run id) says which
/// execution step made a run, over what the run itself records. Bounded to
/// [`MAX_TREE_DEPTH`] levels and [`MAX_TREE_RUNS`] runs per tree, breadth first.
pub fn lineage_forest(
    entries: &[LineageEntry],
    root: Option<&str>,
    created_by: &HashMap<String, CreatedBy>,
) -> LineageForest {
    let known: HashSet<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    // The origin a run is drawn under: only one that is among the runs.
    let drawn_origins: Vec<Option<&LineageOrigin>> = entries
        .iter()
        .map(|entry| entry.origin.as_ref().filter(|origin| known.contains(origin.run_id.as_str())))
        .collect();
    let shape_entries: Vec<ShapeEntry<'_>> = entries
        .iter()
        .zip(&drawn_origins)
        .map(|(entry, origin)| ShapeEntry {
            id: &entry.id,
            parent: origin.map(|o| o.run_id.as_str()).or(entry.parent_run_id.as_deref()),
            created_at: entry.created_at.as_deref(),
        })
        .collect();
    let mut shape = match root {
        None => Shape::forest(&shape_entries),
        Some(root) => match entries.iter().position(|entry| entry.id == root) {
            Some(position) => Shape::rooted(&shape_entries, position),
            None => return LineageForest::default(),
        },
    };
    let omitted = shape.prune(MAX_TREE_DEPTH, MAX_TREE_RUNS);
    let roots: HashSet<usize> = shape.roots.iter().copied().collect();
    let mut built: Vec<Option<LineageNode>> = (0..entries.len()).map(|_| None).collect();
    for position in shape.post_order() {
        let entry = &entries[position];
        let origin = drawn_origins[position].filter(|_| !roots.contains(&position));
        let relation = match (origin, roots.contains(&position)) {
            (_, true) => LineageRelation::Root,
            (Some(origin), false) => origin.relation,
            (None, false) => LineageRelation::Child,
        };
        let mut node = LineageNode {
            id: entry.id.clone(),
            status: entry.status.clone(),
            created_at: entry.created_at.clone(),
            relation,
            from_checkpoint_id: origin.and_then(|o| o.checkpoint_id.clone()),
            created_by: created_by.get(&entry.id).cloned().or_else(|| entry.created_by.clone()),
            children: Vec::new(),
            omitted_runs: omitted[position],
        };
        for child in &shape.children[position] {
            if let Some(child) = built[*child].take() {
                node.omitted_runs += child.omitted_runs;
                node.children.push(child);
            }
        }
        built[position] = Some(node);
    }
    let roots: Vec<LineageNode> = shape.roots.iter().filter_map(|root| built[*root].take()).collect();
    LineageForest {
        omitted_runs: roots.iter().map(|root| root.omitted_runs).sum(),
        roots,
        lineage_cycles: shape.cycles,
        unreadable_runs: Vec::new(),
    }
}

/// The lineage trees of the store (`root`: the tree below that run, from the runs of its
/// trace — branches and replays keep their source's `rootRunId`). Every run of the listing is
/// read, a chunk at a time, to find where it came from; only its [`LineageEntry`] is kept.
pub async fn build_lineage_forest(
    store: &dyn RunStore,
    root: Option<&str>,
    created_by: &HashMap<String, CreatedBy>,
) -> Result<LineageForest, InspectError> {
    let query = match root {
        None => RunQuery::all(),
        Some(root) => match store.list_one(root).await? {
            Some(entry) => RunQuery::in_trace(entry.root_run_id),
            None => return Ok(LineageForest::default()),
        },
    };
    let listed = store.list(&query).await?;
    let mut unreadable: Vec<UnreadableRun> = listed.problems.into_iter().map(UnreadableRun::from).collect();
    let mut entries = Vec::with_capacity(listed.items.len());
    for chunk in listed.items.chunks(FOREST_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|entry| entry.id.clone()).collect();
        let loaded = store.get_many(&ids).await?;
        unreadable.extend(loaded.problems.into_iter().map(UnreadableRun::from));
        let mut by_id: HashMap<String, LineageEntry> =
            loaded.items.iter().map(|stored| (stored.run.id.clone(), LineageEntry::of(&stored.run))).collect();
        // Listing order, whatever order the store returned them in.
        entries.extend(chunk.iter().filter_map(|entry| by_id.remove(&entry.id)));
    }
    let mut forest = lineage_forest(&entries, root, created_by);
    forest.unreadable_runs = unreadable;
    Ok(forest)
}

/// Draws lineage trees like [`render`], each branch or replay saying where it came from and
/// which execution made it: `B [paused] — branch from checkpoint C, by exec-1 step branch`.
pub fn render_lineage(roots: &[LineageNode], include_status: bool) -> String {
    let handles: Vec<&LineageNode> = roots.iter().collect();
    render_lines(
        &handles,
        |node| {
            let mut text = label(&node.id, node.status.as_str(), include_status);
            let from = match &node.from_checkpoint_id {
                Some(checkpoint) => format!(" from checkpoint {checkpoint}"),
                None => String::new(),
            };
            match node.relation {
                LineageRelation::Branch => text.push_str(&format!(" — branch{from}")),
                LineageRelation::Replay => text.push_str(&format!(" — replay{from}")),
                LineageRelation::Root | LineageRelation::Child => {}
            }
            if let Some(made) = &node.created_by {
                let separator = if matches!(node.relation, LineageRelation::Branch | LineageRelation::Replay) {
                    ","
                } else {
                    " —"
                };
                text.push_str(&format!("{separator} by {}", made.execution_id));
                if let Some(step) = &made.step_id {
                    text.push_str(&format!(" step {step}"));
                }
            }
            push_omitted_note(&mut text, node.omitted_here());
            text
        },
        |node| node.children.iter().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Expected, MemoryStore, Revision};
    use serde_json::json;

    fn run(id: &str, parent: Option<&str>, created_at: &str, status: &str) -> Run {
        Run::from_value(json!({
            "id": id, "status": status,
            "timestamps": {"createdAt": created_at},
            "metrics": {"tokenUsage": {"prompt": 1, "completion": 1, "total": 2}, "cost": 0.1},
            "metadata": {"lineage": {"parentRunId": parent}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn entry(run: &Run) -> RunIndexEntry {
        RunIndexEntry::of(run, Revision(1))
    }

    #[test]
    fn render_uses_the_reference_glyphs_without_trailing_newline() {
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("B", Some("R"), "2025-01-01T00:00:03.000Z", "failed"),
            run("A", Some("R"), "2025-01-01T00:00:01.000Z", "completed"),
            run("G", Some("A"), "2025-01-01T00:00:02.000Z", "failed"),
            run("H", Some("A"), "2025-01-01T00:00:02.500Z", "completed"),
            run("S", None, "2025-01-01T00:00:04.000Z", "paused"),
        ];
        let forest = forest_from_runs(&runs);
        let text = render(&forest.roots, true);
        assert_eq!(
            text,
            "R [completed]\n├─ A [completed]\n│  ├─ G [failed]\n│  └─ H [completed]\n└─ B [failed]\nS [paused]"
        );
        assert_eq!(render(&forest.roots, false), "R\n├─ A\n│  ├─ G\n│  └─ H\n└─ B\nS");
        let index: Vec<RunIndexEntry> = runs.iter().rev().map(entry).collect();
        assert_eq!(render_index_forest(&index, true).text, text, "the index-only render draws the same forest");
        assert_eq!(render(&[], true), "");
    }

    fn chain(length: usize) -> Vec<Run> {
        (0..length)
            .map(|n| {
                let parent = n.checked_sub(1).map(|p| format!("c{p:06}"));
                let created_at = format!("2025-01-01T{:02}:{:02}:{:02}.000Z", n / 3600 % 24, n / 60 % 60, n % 60);
                run(&format!("c{n:06}"), parent.as_deref(), &created_at, "failed")
            })
            .collect()
    }

    #[test]
    fn a_deep_chain_is_cut_at_the_depth_limit_and_the_rest_counted() {
        let runs = chain(5_000);
        let tree = tree_from_runs(&runs, "c000000").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        assert_eq!(tree.omitted_runs, 5_000 - MAX_TREE_DEPTH as u64);
        assert_eq!(root.omitted_runs, tree.omitted_runs);
        assert_eq!(root.subtree_metrics.run_count, MAX_TREE_DEPTH as u64, "metrics cover the runs shown");
        let text = render(std::slice::from_ref(&root), false);
        assert_eq!(text.lines().count(), MAX_TREE_DEPTH);
        let last = text.lines().last().unwrap_or_default();
        assert!(last.ends_with(&format!(
            "c{:06} ({} more runs below, not shown)",
            MAX_TREE_DEPTH - 1,
            tree.omitted_runs
        )));
        let json = serde_json::to_value(&root).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["omittedRuns"], 5_000 - MAX_TREE_DEPTH as u64);
        assert!(json["children"][0].get("omittedRuns").is_some());
        let mut leaf = &json;
        while let Some(child) = leaf["children"].get(0) {
            leaf = child;
        }
        assert_eq!(leaf["omittedRuns"], 5_000 - MAX_TREE_DEPTH as u64, "counted where the chain was cut");

        let forest = forest_from_runs(&runs);
        assert_eq!(forest.omitted_runs, tree.omitted_runs, "the forest's trees are bounded alike");
        // Cloning, comparing and dropping the nodes walk only the bounded tree.
        assert_eq!(forest.clone(), forest);
    }

    #[test]
    fn a_wide_family_shows_its_first_runs_breadth_first() {
        let mut runs = vec![run("R", None, "2025-01-01T00:00:00.000Z", "failed")];
        for n in 0..3_000 {
            runs.push(run(
                &format!("k{n:04}"),
                Some("R"),
                &format!("2025-01-01T01:{:02}:{:02}.000Z", n / 60, n % 60),
                "completed",
            ));
        }
        runs.push(run("grandchild", Some("k0000"), "2025-01-01T02:00:00.000Z", "failed"));
        let tree = tree_from_runs(&runs, "R").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        assert_eq!(root.children.len(), MAX_TREE_RUNS - 1);
        assert_eq!(root.children.last().map(|c| c.id.as_str()), Some("k0998"), "in sibling order");
        assert!(root.children[0].children.is_empty(), "the next level comes after the whole first one");
        assert_eq!(tree.omitted_runs, 3_002 - MAX_TREE_RUNS as u64);
        assert_eq!(root.children[0].omitted_runs, 1);
        assert!(
            render(std::slice::from_ref(&root), true).starts_with("R [failed] (2001 more runs below, not shown)\n")
        );
    }

    #[test]
    fn drawn_indentation_stops_growing_at_the_cap() {
        let runs = chain(300);
        let index: Vec<RunIndexEntry> = runs.iter().map(entry).collect();
        let text = render_index_forest(&index, false).text;
        assert_eq!(text.lines().count(), 300, "the index forest draws every run");
        let lines: Vec<&str> = text.lines().collect();
        // Run n is drawn behind n - 1 levels of prefix: 64 drawn, the rest counted.
        assert_eq!(lines[65], format!("{}└─ c000065", "   ".repeat(64)));
        assert_eq!(lines[66], format!("{}(+1) └─ c000066", "   ".repeat(64)));
        assert_eq!(lines[299], format!("{}(+234) └─ c000299", "   ".repeat(64)));
        assert!(lines.iter().all(|line| line.chars().count() <= 3 * MAX_DRAWN_INDENT + 24));
    }

    #[test]
    fn subtree_metrics_add_children_bottom_up() {
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("A", Some("R"), "2025-01-01T00:00:01.000Z", "completed"),
            run("G", Some("A"), "2025-01-01T00:00:02.000Z", "completed"),
        ];
        let tree = tree_from_runs(&runs, "R").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        assert_eq!(root.subtree_metrics.run_count, 3);
        assert_eq!(root.subtree_metrics.token_usage.total, JsNumber(6.0));
        assert_eq!(root.subtree_metrics.cost, JsNumber(0.1 + (0.1 + 0.1)), "children are summed first, bottom-up");
        assert_eq!(root.children[0].subtree_metrics.run_count, 2);
        let keys: Vec<&str> = root.subtree_metrics.timings.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["retrievalMs", "modelMs", "toolMs", "workflowMs", "verifierMs"]);
    }

    #[test]
    fn equal_creation_times_are_ordered_by_id() {
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("c", Some("R"), "2025-01-01T00:00:01.000Z", "completed"),
            run("b", Some("R"), "2025-01-01T00:00:01.000Z", "completed"),
        ];
        let forest = forest_from_runs(&runs);
        assert_eq!(render(&forest.roots, false), "R\n├─ b\n└─ c");
    }

    #[test]
    fn a_self_parented_run_is_cut_and_reported() {
        let runs = [run("loop", Some("loop"), "2025-01-01T00:00:00.000Z", "failed")];
        let tree = tree_from_runs(&runs, "loop").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        assert!(root.children.is_empty());
        assert_eq!(root.subtree_metrics.run_count, 1);
        assert_eq!(
            tree.lineage_cycles,
            [LineageCycle {
                run_ids: vec!["loop".into()],
                cut_run_id: "loop".into(),
                ignored_parent_run_id: "loop".into()
            }]
        );
        let forest = forest_from_runs(&runs);
        assert_eq!(render(&forest.roots, true), "loop [failed]", "the reference drops it from the forest");
        assert_eq!(forest.lineage_cycles.len(), 1);
    }

    #[test]
    fn a_parent_cycle_becomes_a_root_at_its_first_listed_member() {
        let runs = [
            run("root", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("x", Some("y"), "2025-01-01T00:00:01.000Z", "failed"),
            run("y", Some("z"), "2025-01-01T00:00:02.000Z", "failed"),
            run("z", Some("x"), "2025-01-01T00:00:03.000Z", "failed"),
            run("leaf", Some("y"), "2025-01-01T00:00:04.000Z", "completed"),
        ];
        let forest = forest_from_runs(&runs);
        assert_eq!(render(&forest.roots, false), "root\nx\n└─ z\n   └─ y\n      └─ leaf");
        assert_eq!(forest.lineage_cycles[0].run_ids, ["x", "y", "z"]);
        assert_eq!(forest.lineage_cycles[0].ignored_parent_run_id, "y");
        let index: Vec<RunIndexEntry> = runs.iter().map(entry).collect();
        let drawn = render_index_forest(&index, false);
        assert_eq!(drawn.text, "root\nx\n└─ z\n   └─ y\n      └─ leaf");
        assert_eq!(drawn.lineage_cycles, forest.lineage_cycles);

        let tree = tree_from_runs(&runs, "y").unwrap_or_else(|e| panic!("{e}"));
        let root = tree.root.unwrap_or_else(|| panic!("root"));
        assert_eq!(render(std::slice::from_ref(&root), false), "y\n├─ x\n│  └─ z\n└─ leaf");
        assert_eq!(tree.lineage_cycles[0].run_ids, ["y", "z", "x"]);
    }

    #[tokio::test]
    async fn the_store_forest_built_chunk_by_chunk_is_the_forest_of_all_its_runs() {
        let store = MemoryStore::new();
        let count = FOREST_CHUNK * 2 + 345;
        let mut runs = Vec::new();
        for n in 0..count {
            // Parents in other chunks, often created after their children; some links loop.
            let parent = (n % 4 != 0).then(|| format!("run-{:05}", (n * 7 + 3) % count));
            let second = (n * 7919) % count;
            let created_at = format!("2025-01-01T00:{:02}:{:02}.000Z", second / 60, second % 60);
            let status = if n % 3 == 0 { "failed" } else { "completed" };
            runs.push(run(&format!("run-{n:05}"), parent.as_deref(), &created_at, status));
        }
        let mut broken = run("run-broken", Some("run-00001"), "2025-01-01T00:00:30.500Z", "failed");
        broken.steps.push(crate::model::Step::from_value(Value::Null));
        runs.push(broken);
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));

        let listed = store.list(&RunQuery::all()).await.unwrap_or_else(|e| panic!("{e}")).items;
        let by_id: HashMap<&str, &Run> = runs.iter().map(|run| (run.id.as_str(), run)).collect();
        let in_listing_order: Vec<Run> = listed.iter().map(|entry| by_id[entry.id.as_str()].clone()).collect();
        let all_at_once = forest_from_runs(&in_listing_order);

        let forest = build_forest(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(forest, all_at_once);
        let placed: u64 = forest.roots.iter().map(|root| root.subtree_metrics.run_count).sum();
        assert_eq!(placed, count as u64, "every readable run is in the forest once");
        assert!(!forest.lineage_cycles.is_empty(), "the parent links above loop somewhere");
        assert_eq!(forest.unreadable_runs.len(), 1);
        assert_eq!(forest.unreadable_runs[0].run_id.as_deref(), Some("run-broken"));
        // Streamed: all families in one batch, a few batches, and families larger than a batch.
        for batch_runs in [usize::MAX, FOREST_BATCH, 7, 1] {
            assert_streamed_as_built(&store, &forest, batch_runs).await;
        }
        assert_scanned_as_built(&runs, &forest, &[usize::MAX, FOREST_BATCH, 7, 1]).await;
    }

    /// The same runs in an SQLite store, which scans its forest ([`write_scanned_forest`]):
    /// the forest written a page of `batches` runs at a time is `forest`.
    async fn assert_scanned_as_built(runs: &[Run], forest: &RunForest, batches: &[usize]) {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            crate::store::SqliteStore::open(temp.path().join("salvage.db")).await.unwrap_or_else(|e| panic!("{e}"));
        store.save_all(runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let scanned = store.forest_scan(None, 1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(scanned.is_some(), "SQLite scans its forest");
        for batch_runs in batches {
            assert_streamed_as_built(&store, forest, *batch_runs).await;
        }
    }

    /// A run as [`run`] makes it, created at `created_at` or without a creation time.
    fn run_at(id: &str, parent: Option<&str>, created_at: Option<&str>, status: &str) -> Run {
        let mut value = json!({
            "id": id, "status": status,
            "metrics": {"tokenUsage": {"prompt": 3, "completion": 2, "total": 5}, "cost": 0.25},
            "metadata": {"lineage": {"parentRunId": parent}}
        });
        if let Some(created_at) = created_at {
            value["timestamps"] = json!({"createdAt": created_at});
        }
        Run::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_scanned_store_writes_the_forest_its_whole_listing_shapes() {
        // Pseudo-random lineage (a fixed seed): children created after and before their
        // parents, equal creation times, runs without one, parents not in the store, runs that
        // are their own parent, parent loops with runs below them, unreadable runs with runs
        // below them, a chain past the depth limit and a family past the run limit.
        let mut seed: u64 = 0x5a1_7a9e;
        let mut next = move |bound: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(seed >> 33).unwrap_or(0) % bound.max(1)
        };
        let count = 2_500;
        let mut runs = Vec::new();
        for n in 0..count {
            let parent = match next(20) {
                0..=4 => None,
                5 => Some(format!("gone-{n}")),
                6 => Some(format!("r{n:04}")),
                7..=8 => Some(format!("r{:04}", next(count))),
                _ if n > 0 => Some(format!("r{:04}", n - 1 - next(n.min(40)))),
                _ => None,
            };
            let second = next(600);
            let created_at =
                (next(25) != 0).then(|| format!("2025-01-01T00:{:02}:{:02}.000Z", second / 60, second % 60));
            let status = ["completed", "failed", "paused"][next(3)];
            let mut run = run_at(&format!("r{n:04}"), parent.as_deref(), created_at.as_deref(), status);
            if next(90) == 0 {
                run.steps.push(crate::model::Step::from_value(Value::Null));
            }
            runs.push(run);
        }
        for depth in 0..MAX_TREE_DEPTH + 15 {
            let parent = (depth > 0).then(|| format!("chain-{:03}", depth - 1));
            // Every other link created before its parent.
            let second = if depth % 2 == 0 { depth * 2 + 2 } else { depth * 2 - 1 };
            let created_at = format!("2025-01-01T01:{:02}:{:02}.000Z", second / 60, second % 60);
            runs.push(run_at(&format!("chain-{depth:03}"), parent.as_deref(), Some(&created_at), "failed"));
        }
        runs.push(run_at("wide", None, Some("2025-01-01T02:00:00.000Z"), "completed"));
        for n in 0..MAX_TREE_RUNS + 40 {
            let created_at = format!("2025-01-01T02:{:02}:{:02}.000Z", (n / 60) % 60, n % 60);
            runs.push(run_at(&format!("wide-{n:04}"), Some("wide"), Some(&created_at), "completed"));
        }
        let store = MemoryStore::new();
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let forest = build_forest(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!forest.lineage_cycles.is_empty(), "some parent links loop");
        assert!(!forest.unreadable_runs.is_empty(), "some runs cannot be summarised");
        assert!(forest.omitted_runs > 0, "the chain and the wide family are cut");
        assert_scanned_as_built(&runs, &forest, &[usize::MAX, FOREST_BATCH, 64, 7, 1]).await;
    }

    /// [`write_forest_json`] writes exactly the JSON of [`build_forest`]'s roots, and finds the
    /// same cycles and unreadable runs.
    async fn assert_streamed_as_built(store: &dyn RunStore, forest: &RunForest, batch_runs: usize) {
        let mut out = Vec::new();
        let found = write_forest_json_in_batches(store, &mut out, batch_runs).await.unwrap_or_else(|e| panic!("{e}"));
        let built = serde_json::to_string(&forest.roots).unwrap_or_default();
        assert!(String::from_utf8(out).ok() == Some(built), "streamed ({batch_runs} runs a batch) as built");
        assert_eq!(found.omitted_runs, forest.omitted_runs);
        assert_eq!(found.lineage_cycles, forest.lineage_cycles);
        assert_eq!(found.unreadable_runs, forest.unreadable_runs);
    }

    #[tokio::test]
    async fn the_store_forest_shows_the_runs_below_an_unreadable_run_as_roots() {
        let store = MemoryStore::new();
        let mut broken = run("broken", None, "2025-01-01T00:00:01.000Z", "failed");
        broken.steps.push(crate::model::Step::from_value(Value::Null));
        let runs = [
            run("first", None, "2025-01-01T00:00:00.000Z", "completed"),
            broken,
            run("below", Some("broken"), "2025-01-01T00:00:02.000Z", "failed"),
            run("under", Some("below"), "2025-01-01T00:00:03.000Z", "completed"),
        ];
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let forest = build_forest(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(render(&forest.roots, false), "first\nbelow\n└─ under");
        assert_eq!(forest.unreadable_runs.len(), 1);
        assert_eq!(render(&forest_from_runs(&runs).roots, false), "first\nbelow\n└─ under", "as from the runs");
        assert_streamed_as_built(&store, &forest, usize::MAX).await;
        assert_streamed_as_built(&store, &forest, 1).await;
        assert_scanned_as_built(&runs, &forest, &[usize::MAX, 1]).await;
    }

    #[tokio::test]
    async fn a_family_listed_before_its_root_is_written_in_listing_order() {
        let store = MemoryStore::new();
        let mut broken = run("broken", Some("late-root"), "2025-01-01T00:00:00.000Z", "failed");
        broken.steps.push(crate::model::Step::from_value(Value::Null));
        // The family of "late-root" lists first (its runs were created before it), and the
        // run below its unreadable member becomes a root of its own between the others.
        let runs = [
            broken,
            run("early", None, "2025-01-01T00:00:01.000Z", "completed"),
            run("orphan", Some("broken"), "2025-01-01T00:00:02.000Z", "failed"),
            run("between", None, "2025-01-01T00:00:03.000Z", "completed"),
            run("late-root", None, "2025-01-01T00:00:04.000Z", "completed"),
            run("early-child", Some("late-root"), "2025-01-01T00:00:00.500Z", "completed"),
            run("last", None, "2025-01-01T00:00:05.000Z", "completed"),
        ];
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let forest = build_forest(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(render(&forest.roots, false), "early\norphan\nbetween\nlate-root\n└─ early-child\nlast");
        for batch_runs in [usize::MAX, 3, 1] {
            assert_streamed_as_built(&store, &forest, batch_runs).await;
        }
        assert_scanned_as_built(&runs, &forest, &[usize::MAX, 3, 2, 1]).await;
    }

    #[tokio::test]
    async fn a_store_tree_reads_only_the_family() {
        let store = MemoryStore::new();
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("A", Some("R"), "2025-01-01T00:00:01.000Z", "failed"),
            run("other", None, "2025-01-01T00:00:02.000Z", "completed"),
        ];
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let mut broken = run("broken", None, "2025-01-01T00:00:03.000Z", "failed");
        broken.steps.push(crate::model::Step::from_value(Value::Null));
        store.save(&broken, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));

        let tree = build_tree(&store, "A").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tree.root.as_ref().map(|root| root.id.as_str()), Some("A"), "a non-root run gives its subtree");
        assert!(tree.unreadable_runs.is_empty(), "the malformed run elsewhere in the store is not read");
        assert_eq!(build_tree(&store, "nope").await.map(|tree| tree.root.is_none()).ok(), Some(true));

        let forest = build_forest(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(forest.roots.iter().map(|root| root.id.as_str()).collect::<Vec<_>>(), ["R", "other"]);
        assert_eq!(forest.unreadable_runs.len(), 1, "the malformed run is reported, not fatal");
        assert_eq!(forest.unreadable_runs[0].run_id.as_deref(), Some("broken"));
        let drawn = render_store_forest(&store, true).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(drawn.text, "R [completed]\n└─ A [failed]\nother [completed]\nbroken [failed]");
    }

    #[tokio::test]
    async fn a_tree_built_knowing_a_member_is_the_tree_read_from_the_store() {
        let store = MemoryStore::new();
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            run("A", Some("R"), "2025-01-01T00:00:01.000Z", "failed"),
            run("B", Some("R"), "2025-01-01T00:00:02.000Z", "completed"),
            run("C", Some("A"), "2025-01-01T00:00:03.000Z", "failed"),
            run("other", None, "2025-01-01T00:00:04.000Z", "completed"),
        ];
        store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        let shape = |tree: &RunTree| serde_json::to_value(&tree.root).unwrap_or_else(|e| panic!("{e}"));
        let read = build_tree(&store, "R").await.unwrap_or_else(|e| panic!("{e}"));
        for known in &runs {
            let tree = build_tree_knowing(&store, "R", Some(known)).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shape(&tree), shape(&read), "knowing {}", known.id);
        }
        // The known run is used as given, not read again.
        let mut changed = runs[3].clone();
        changed.status = RunStatus::Cancelled;
        let tree = build_tree_knowing(&store, "R", Some(&changed)).await.unwrap_or_else(|e| panic!("{e}"));
        let drawn = render(std::slice::from_ref(tree.root.as_ref().unwrap_or_else(|| panic!("root"))), true);
        assert_eq!(drawn, "R [completed]\n├─ A [failed]\n│  └─ C [cancelled]\n└─ B [completed]");
    }

    #[tokio::test]
    async fn a_tree_drawn_from_kept_leaves_is_the_tree_of_the_decoded_runs() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kept =
            crate::store::SqliteStore::open(temp.path().join("salvage.db")).await.unwrap_or_else(|e| panic!("{e}"));
        let decoded = MemoryStore::new();
        let mut a = run("A", Some("R"), "2025-01-01T00:00:01.000Z", "failed");
        a.steps.push(crate::model::Step::from_value(json!({"id": "A:1", "type": "tool", "status": null})));
        a.input = json!({"ask": "refund", "n": 1.5});
        let mut broken = run("broken", Some("A"), "2025-01-01T00:00:03.000Z", "failed");
        broken.steps.push(crate::model::Step::from_value(Value::Null));
        let mut malformed_root = run("M", None, "2025-01-01T00:00:05.000Z", "failed");
        malformed_root.checkpoints.push(crate::model::Checkpoint::from_value(Value::Null));
        let runs = [
            run("R", None, "2025-01-01T00:00:00.000Z", "completed"),
            a,
            run("B", Some("R"), "2025-01-01T00:00:02.000Z", "completed"),
            broken,
            run("below-broken", Some("broken"), "2025-01-01T00:00:04.000Z", "failed"),
            malformed_root,
            run("M1", Some("M"), "2025-01-01T00:00:06.000Z", "failed"),
        ];
        for store in [&kept as &dyn RunStore, &decoded] {
            store.save_all(&runs, Expected::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let shown = |tree: &RunTree| {
            json!({
                "root": tree.root, "omitted": tree.omitted_runs,
                "unreadable": tree.unreadable_runs.iter().map(|u| json!([u.run_id, u.message])).collect::<Vec<_>>(),
            })
        };
        for (root, known) in [("R", None), ("A", None), ("R", Some(&runs[1])), ("M1", None)] {
            let from_leaves = build_tree_knowing(&kept, root, known).await.unwrap_or_else(|e| panic!("{e}"));
            let from_runs = build_tree_knowing(&decoded, root, known).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shown(&from_leaves), shown(&from_runs), "tree of {root}");
        }
        let from_leaves = build_tree(&kept, "R").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_leaves.unreadable_runs.len(), 1, "the malformed child is left out, with its subtree");
        // A malformed root is the tree's error, in full, as when its run is decoded.
        let errors = [build_tree(&kept, "M").await.err(), build_tree(&decoded, "M").await.err()].map(|error| {
            error.map(|error| error.to_string()).unwrap_or_else(|| panic!("a malformed root is an error"))
        });
        assert_eq!(errors[0], errors[1]);
        assert!(errors[0].contains("checkpoints[0]"), "{}", errors[0]);
    }

    fn lineage(id: &str, parent: Option<&str>, origin: Option<(&str, LineageRelation)>, n: usize) -> LineageEntry {
        LineageEntry {
            id: id.to_owned(),
            status: RunStatus::Failed,
            created_at: Some(format!("2025-01-01T00:00:00.{n:03}Z")),
            parent_run_id: parent.map(str::to_owned),
            origin: origin.map(|(run_id, relation)| LineageOrigin {
                run_id: run_id.to_owned(),
                checkpoint_id: Some(format!("{run_id}:checkpoint:1")),
                relation,
            }),
            created_by: None,
        }
    }

    #[test]
    fn a_branch_and_a_replay_are_drawn_under_their_origin_and_a_missing_origin_leaves_the_parent() {
        let entries = [
            lineage("R", None, None, 0),
            lineage("C", Some("R"), None, 1),
            // A branch of the child keeps the child's parent; it is drawn under the child.
            lineage("B", Some("R"), Some(("C", LineageRelation::Branch)), 2),
            lineage("P", None, Some(("R", LineageRelation::Replay)), 3),
            lineage("O", Some("R"), Some(("gone", LineageRelation::Branch)), 4),
        ];
        let made = HashMap::from([(
            "B".to_owned(),
            CreatedBy { execution_id: "exec-1".into(), step_id: Some("branch".into()), incident_run_id: None },
        )]);
        let forest = lineage_forest(&entries, None, &made);
        assert_eq!(
            render_lineage(&forest.roots, false),
            "R\n├─ C\n│  └─ B — branch from checkpoint C:checkpoint:1, by exec-1 step branch\n├─ P — replay from \
             checkpoint R:checkpoint:1\n└─ O"
        );
        let json = serde_json::to_value(&forest.roots[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["relation"], "root");
        assert_eq!(json["children"][0]["relation"], "child");
        assert_eq!(json["children"][0]["children"][0]["relation"], "branch");
        assert_eq!(json["children"][0]["children"][0]["createdBy"]["executionId"], "exec-1");
        assert_eq!(json["children"][2]["relation"], "child", "drawn under its parent: its origin is not there");
        assert!(json["children"][2].get("fromCheckpointId").is_none());

        let below_c = lineage_forest(&entries, Some("C"), &made);
        assert_eq!(
            render_lineage(&below_c.roots, false),
            "C\n└─ B — branch from checkpoint C:checkpoint:1, by exec-1 step branch"
        );
        assert!(lineage_forest(&entries, Some("nope"), &made).roots.is_empty());
    }

    #[test]
    fn a_long_chain_of_branches_is_bounded_like_a_tree_and_an_origin_loop_is_cut() {
        let entries: Vec<LineageEntry> = (0..5_000)
            .map(|n: usize| {
                let origin = n.checked_sub(1).map(|p| format!("b{p:05}"));
                lineage(&format!("b{n:05}"), None, origin.as_deref().map(|o| (o, LineageRelation::Branch)), n % 1000)
            })
            .collect();
        let forest = lineage_forest(&entries, None, &HashMap::new());
        assert_eq!(forest.roots.len(), 1);
        assert_eq!(forest.omitted_runs, 5_000 - MAX_TREE_DEPTH as u64);
        let text = render_lineage(&forest.roots, false);
        assert_eq!(text.lines().count(), MAX_TREE_DEPTH);
        assert!(
            text.ends_with(&format!("({} more runs below, not shown)", 5_000 - MAX_TREE_DEPTH)),
            "{}",
            &text[text.len() - 200..]
        );
        // Cloning, comparing and dropping walk only the bounded tree.
        assert_eq!(forest.clone(), forest);

        let looped = [
            lineage("x", None, Some(("y", LineageRelation::Branch)), 1),
            lineage("y", None, Some(("x", LineageRelation::Replay)), 2),
        ];
        let forest = lineage_forest(&looped, None, &HashMap::new());
        assert_eq!(render_lineage(&forest.roots, false), "x\n└─ y — replay from checkpoint x:checkpoint:1");
        assert_eq!(forest.lineage_cycles.len(), 1, "the loop is cut and reported");
    }

    #[test]
    fn a_run_names_its_origin_from_the_replay_metadata_or_the_branch_lineage() {
        let replay = Run::from_value(json!({
            "id": "r:partial-replay:1", "status": "paused",
            "metadata": {
                "lineage": {"branchOriginRunId": "r", "branchCheckpointId": "r:checkpoint:3"},
                "replay": {"sourceRunId": "r", "sourceCheckpointId": "r:checkpoint:3"},
                "salvage": {"executionId": "exec-9", "stepId": "replay"}
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let entry = LineageEntry::of(&replay);
        assert_eq!(
            entry.origin,
            Some(LineageOrigin {
                run_id: "r".into(),
                checkpoint_id: Some("r:checkpoint:3".into()),
                relation: LineageRelation::Replay
            })
        );
        assert_eq!(entry.created_by.map(|c| c.execution_id), Some("exec-9".into()));
        let branch = Run::from_value(json!({
            "id": "b", "status": "paused",
            "metadata": {"lineage": {"branchOriginRunId": "r", "branchCheckpointId": "r:checkpoint:2"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(LineageEntry::of(&branch).origin.map(|o| o.relation), Some(LineageRelation::Branch));
        let own = Run::from_value(json!({"id": "s", "metadata": {"lineage": {"branchOriginRunId": "s"}}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(LineageEntry::of(&own).origin, None, "a run is never its own origin");
    }
}
