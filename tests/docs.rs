//! One source for the option references: the files under `cache-macros/docs/` are the
//! attributes' own docs (what an IDE shows) and the crate docs, and the README must hold each
//! of them verbatim, so the three cannot drift.

#[test]
fn the_readme_holds_each_option_reference_verbatim() {
    let readme = include_str!("../README.md");
    for (name, reference) in [
        (
            "redis_cached",
            include_str!("../cache-macros/docs/redis_cached.md"),
        ),
        (
            "redis_cache_put",
            include_str!("../cache-macros/docs/redis_cache_put.md"),
        ),
        (
            "redis_cache_evict",
            include_str!("../cache-macros/docs/redis_cache_evict.md"),
        ),
    ] {
        assert!(
            readme.contains(reference),
            "README.md does not hold cache-macros/docs/{name}.md as it is; copy the file's table into it"
        );
    }
}
