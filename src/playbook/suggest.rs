//! "Did you mean" suggestions for misspelled names.

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1) + usize::from(word.chars().count() > 8);
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| (distance(&word_lower, &candidate.to_ascii_lowercase()), candidate))
        .filter(|(score, candidate)| *score <= limit || candidate.starts_with(word) && word.len() >= 3)
        .min_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.cmp(y)))
        .map(|(_, candidate)| candidate)
}

/// "did you mean `x`?" or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, candidates).map(|candidate| format!("did you mean `{candidate}`?"))
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous_previous: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(previous_previous[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut previous_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_not_strangers() {
        let fields = ["next", "on", "when", "action", "description"];
        assert_eq!(closest("nxt", fields), Some("next"));
        assert_eq!(closest("acton", fields), Some("action"));
        assert_eq!(closest("descripton", fields), Some("description"));
        assert_eq!(closest("wehn", fields), Some("when"), "transpositions count once");
        assert_eq!(closest("timeout", fields), None);
        assert_eq!(
            closest("branch_from_chekpoint", ["branch_from_checkpoint", "partial_replay"]),
            Some("branch_from_checkpoint")
        );
        assert_eq!(closest("resum", ["resume", "branch"]), Some("resume"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
