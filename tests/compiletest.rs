//! The macros' diagnostics (`tests/ui/*.rs` must fail to compile with exactly the
//! `.stderr` beside them) and expansions that must compile and run (`tests/ui/pass`).
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test --test compiletest`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
