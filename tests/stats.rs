//! `Stats` serializes with every counter (for a `/stats` endpoint), and the README's
//! Statistics section lists every one, so neither can fall behind the other.

use redis_memo::Stats;

#[test]
fn every_counter_serializes_and_is_listed_in_the_readme() {
    let value = serde_json::to_value(Stats::default()).unwrap();
    let counters = value.as_object().expect("an object of counters");
    assert!(counters.len() >= 18, "{counters:?}");
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Statistics")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Statistics section");
    for counter in counters.keys() {
        assert!(
            section.contains(&format!("| `{counter}` |")),
            "the README's Statistics table lacks `{counter}`"
        );
    }
    let back: Stats = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, Stats::default());
}
