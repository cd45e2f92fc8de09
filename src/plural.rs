//! Counts in the sentences manymodel prints: `1 partition`, `2 partitions`.

/// `n` and `noun`, with an `s` unless `n` is one.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(count(0, "chunk"), "0 chunks");
        assert_eq!(count(1, "partition"), "1 partition");
        assert_eq!(count(2, "store"), "2 stores");
    }
}
