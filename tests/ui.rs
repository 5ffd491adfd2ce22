//! Compile-time checks of the attribute, pinned by their messages (`tests/ui/fail/*.stderr`),
//! and shapes that must compile (`tests/ui/pass`). Messages depend on the compiler version,
//! which `rust-toolchain.toml` pins; regenerate with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
